"""Workflows that meet the character U+0000, which State cannot hold (tests/test_pg_types.py,
tests/test_nul_inputs.py)."""

from __future__ import annotations

from orchd import Form, State, Target, done, init, inputstep, step, workflow


@step("add a NUL")
def add_a_nul(text: str) -> State:
    return {"plain": text, "label": {"name": text + "\x00"}}


@workflow("A step returns U+0000", target=Target.SYSTEM)
def returns_nul():  # type: ignore[no-untyped-def]
    return init >> add_a_nul >> done


class Note(Form):
    note: str


@inputstep("ask for a note")
def ask_for_a_note() -> type[Form]:
    return Note


@workflow("Asks for a note", target=Target.SYSTEM)
def asks_for_note():  # type: ignore[no-untyped-def]
    return init >> ask_for_a_note >> done


@step("raise a NUL")
def raise_a_nul() -> State:
    raise ValueError("bad\x00value")


@workflow("A step raises an error whose message holds U+0000", target=Target.SYSTEM)
def raises_nul():  # type: ignore[no-untyped-def]
    return init >> raise_a_nul >> done
