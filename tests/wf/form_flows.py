"""A workflow with a form of several fields (tests/test_form_errors.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from orchd import Form, Target, done, init, workflow


class Port(msgspec.Struct):
    speed: int


class PortForm(Form):
    name: str
    vlan: Annotated[int, msgspec.Meta(ge=1, le=4094)]
    port: Port
    mtu: int = 1500


@workflow("Configure a port", initial_input_form=PortForm, target=Target.CREATE)
def configure_port():  # type: ignore[no-untyped-def]
    return init >> done
