"""Starting a process: checking a start's input against its workflow and building the new
process (its first State, its subscription lock, its first event), for a start by a user, a
schedule or a parent's children step alike; and a user's or a schedule's start committed and
set running (``begin``)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import msgspec

from orchd.dsl import Workflow
from orchd.engine import formpages, messages
from orchd.engine.events import event
from orchd.errors import FormValidationError, ShuttingDown
from orchd.model import HOLDS_SUBSCRIPTION, RESERVED_KEYS, ProcessStatus
from orchd.state import (
    StepOutputError,
    refuse_nul,
    require_object,
    to_json_values,
    validate_form,
)
from orchd.store.base import NewProcess, Store
from orchd.store.views import uuid_or_none
from orchd.tracing import parse_traceparent

if TYPE_CHECKING:
    from orchd.engine.runtime import Runtime

P = ProcessStatus


def build_start(
    wf: Workflow,
    input: Any,
    reporter: str | None,
    pid: str,
    *,
    parent_id: str | None = None,
    group: int | None = None,
    index: int | None = None,
    held: bool = False,
    idempotency_key: str | None = None,
    paged: bool = False,
) -> NewProcess:
    """Check a start of ``wf`` (its input) and build it as process ``pid``; raises what a
    refused start raises. A child names its parent, fan-out and element; ``held`` waits
    for a free slot. ``paged``: the input is what the workflow's pages gave
    (``orchd.engine.formpages.start_input``)."""
    if wf.pages is not None and not paged:
        raise FormValidationError(
            f"workflow {wf.name!r} asks its input in pages: start it with the list of the "
            "pages' answers (a children step cannot start it)",
            [{"loc": ["pages", 0], "msg": "page not answered"}],
        )
    values = initial_input(wf, input)
    digest = None if idempotency_key is None else input_digest(values)
    holds = wf.target in HOLDS_SUBSCRIPTION
    lock = values.get("subscription_id") if holds else None
    version = values.pop("version", None) if holds and _version_apart(wf) else None
    state = {
        **values,
        "process_id": pid,
        "workflow_name": wf.name,
        "workflow_target": str(wf.target),
        "reporter": reporter,
    }
    return NewProcess(
        by=reporter or "engine",
        id=pid,
        workflow=wf.name,
        target=wf.target,
        reporter=reporter,
        state=state,
        lock=lock,
        first_step=wf.steps[0].name,
        first_key=wf.steps[0].key,
        created_at=time.time(),
        parent_id=parent_id,
        child_group=group,
        child_index=index,
        held=held,
        idempotency_key=idempotency_key,
        idempotency_digest=digest,
        events=[event("process", pid, wf.name, P.CREATED, parent_id=parent_id)],
        product=wf.product if holds else None,
        usable_when=wf.usable_when,
        expect_version=version,
    )


def input_digest(values: dict[str, Any]) -> str:
    """What a start's input is, for a later start with its Idempotency-Key to be compared
    with: the SHA-256 of its JSON with sorted keys (so neither key order nor spacing counts)."""
    return hashlib.sha256(msgspec.json.encode(values, order="sorted")).hexdigest()


def _version_apart(wf: Workflow) -> bool:
    """Whether a start's ``version`` is the engine's (checked against the subscription, not
    kept in State), not a field of the workflow's own form."""
    return wf.form is None or "version" not in wf.form.__struct_fields__


def initial_input(wf: Workflow, given: Any) -> dict[str, Any]:
    """The State a start begins with, from its input: the workflow's form, or (without
    one) any JSON object but the engine's own keys; a MODIFY or TERMINATE needs a
    subscription_id."""
    given = dict(require_object(given))
    needs_subscription = wf.target in HOLDS_SUBSCRIPTION
    subscription_id = given.get("subscription_id")
    version = given.pop("version", None) if needs_subscription and _version_apart(wf) else None
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise FormValidationError(
            "version must be an integer",
            [{"loc": ["version"], "msg": "expected an integer (the subscription's version)"}],
        )
    if needs_subscription:
        if subscription_id is None:
            raise FormValidationError(
                f"a {wf.target} workflow needs subscription_id",
                [{"loc": ["subscription_id"], "msg": "field required"}],
            )
        canonical = uuid_or_none(subscription_id) if isinstance(subscription_id, str) else None
        if canonical is None:
            raise FormValidationError(
                "subscription_id must be a UUID",
                [{"loc": ["subscription_id"], "msg": "expected a UUID string"}],
            )
    if wf.form is None:
        reserved = sorted(
            k
            for k in given
            if k in RESERVED_KEYS and not (needs_subscription and k == "subscription_id")
        )
        if reserved:
            raise FormValidationError(
                f"{', '.join(reserved)}: set by the engine, not by the input",
                [{"loc": [k], "msg": "reserved State key"} for k in reserved],
            )
        refuse_nul("the input", given)
        try:
            values = to_json_values("input", given)
        except StepOutputError as exc:
            raise FormValidationError(str(exc), [{"loc": [], "msg": str(exc)}]) from None
    else:
        in_form = "subscription_id" in wf.form.__struct_fields__
        if needs_subscription and not in_form:
            given.pop("subscription_id")
        values = validate_form(wf.form, given)
    if needs_subscription:
        values["subscription_id"] = canonical
    if version is not None:
        values["version"] = version
    return dict(values)


async def begin(
    runtime: Runtime,
    workflow: str,
    input: Any,
    *,
    reporter: str | None,
    idempotency_key: str | None,
    traceparent: str | None,
) -> tuple[str, bool]:
    """A user's or a schedule's start (``Engine.start_once``), committed and set running: the
    process's id, and whether it was created now (False: its Idempotency-Key's, from before)."""
    if not runtime.accepting:
        raise ShuttingDown("the engine is not accepting new processes")
    wf = runtime.workflows.get(workflow)
    paged = False
    if wf is not None:  # a form of several pages, or a list of answers: replayed here
        try:
            input, paged = await formpages.start_input(wf, input, runtime.choices)
        except FormValidationError:
            # A retried start whose first attempt took its own choices (the ports it
            # picked are in use now, by that very process): the key answers it.
            found = await _keyed(runtime.store, idempotency_key, workflow)
            if found is None:
                raise
            return found, False
    op = runtime.prepare_start(
        workflow,
        {} if input is None else input,
        reporter,
        idempotency_key=idempotency_key,
        paged=paged,
    )
    remote = parse_traceparent(traceparent)
    if remote is not None:
        op.trace_id = remote.trace_id
    row = await runtime.store.write(op)
    if row.id != op.id:
        return row.id, False  # the key's process, started before
    if runtime.tracing.on:
        runtime.tracing.started(row.id, row.workflow, row.trace_id, row.created_at, remote=remote)
    runtime.post(row.id, messages.Run(), None, row=row)
    return row.id, True


async def _keyed(store: Store, key: str | None, workflow: str) -> str | None:
    """The process of ``workflow`` an Idempotency-Key started, if any."""
    if key is None:
        return None
    row = await store.keyed_process(key)
    return row.id if row is not None and row.workflow == workflow else None
