"""The products an engine knows and the workflows tied to each: what ``GET /api/products``
shows, and which workflows may start on a subscription now (and why not).

The products are those the loaded workflow modules define, those their workflows name, and
those their Refs reach. A workflow naming a product that no loaded code registers is refused
when the workflows load, naming where the workflow is defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from orchd.dsl import Workflow
from orchd.errors import ConfigError
from orchd.model import ProductInfo, Subscription, Target, UsableWorkflow
from orchd.products import REGISTERED, Product, product_schema, ref_targets
from orchd.store.base import Store


class Catalog:
    """The products of one engine, by name, with their workflows."""

    def __init__(self, workflows: Iterable[Workflow], modules: Iterable[str] = ()) -> None:
        self.workflows: dict[str, list[Workflow]] = {}
        named: dict[str, type[Product]] = {}
        roots = tuple(m for m in modules if m)
        for name, classes in REGISTERED.items():
            loaded = [c for c in classes if roots and c.__module__.startswith(roots)]
            if len(loaded) > 1:
                raise ConfigError(f"workflows: {_two(name, loaded)}")
            if loaded:
                named[name] = loaded[0]
        for wf in workflows:
            if wf.product is None:
                continue
            found = wf.product_class or named.get(wf.product) or _near(wf, roots)
            named.setdefault(wf.product, found)
            if named[wf.product] is not found:
                raise ConfigError(f"workflows: {_two(wf.product, [named[wf.product], found])}")
            self.workflows.setdefault(wf.product, []).append(wf)
        pending = list(named.values())
        while pending:
            for target in ref_targets(pending.pop()):
                if target.product_name not in named:
                    named[target.product_name] = target
                    pending.append(target)
        self.products = dict(sorted(named.items()))

    def info(self) -> list[ProductInfo]:
        return [
            ProductInfo(
                name=name,
                description=cls.product_description,
                schema=product_schema(cls),
                workflows=[wf.name for wf in self.workflows.get(name, [])],
            )
            for name, cls in self.products.items()
        ]

    async def usable(self, store: Store, sub: Subscription) -> list[UsableWorkflow]:
        """Every workflow of the subscription's product that starts on an existing one, with
        whether it may start now and, when not, the ``reason`` a start would be refused with."""
        answers = []
        holder: str | None = None
        users: list[str] | None = None
        if not sub.insync:
            holder = await store.holder(sub.id)
        for wf in self.workflows.get(sub.product, []):
            if wf.target is Target.CREATE:
                continue
            reason = detail = None
            if not sub.insync:
                reason = "locked"
                detail = f"process {holder} holds it" if holder else "another process holds it"
            elif wf.usable_when is not None and sub.status not in wf.usable_when:
                reason = "status"
                detail = f"usable when {' or '.join(wf.usable_when)}; it is {sub.status}"
            elif sub.status == "terminated":
                reason, detail = "status", "it is terminated"
            elif wf.target is Target.TERMINATE:
                if users is None:
                    _, using = await store.relations(sub.id)
                    users = [u.id for u in using if u.status != "terminated"]
                if users:
                    reason, detail = "in_use", f"in use by {', '.join(users)}"
            answers.append(
                UsableWorkflow(
                    name=wf.name,
                    target=wf.target,
                    description=wf.description,
                    usable=reason is None,
                    reason=reason,
                    detail=detail,
                )
            )
        return answers


def _near(wf: Workflow, roots: tuple[str, ...]) -> type[Product]:
    """The class a workflow's product name stands for: the one its own module or package
    registers, else the only one registered under that name."""
    assert wf.product is not None
    classes = REGISTERED.get(wf.product, [])
    package = wf.module.rpartition(".")[0]
    for scope in (wf.module, package):
        near = [c for c in classes if scope and c.__module__.startswith(scope)]
        if len(near) == 1:
            return near[0]
    if len(classes) == 1:
        return classes[0]
    if not classes:
        raise ConfigError(
            f"workflows: workflow {wf.name!r}{_where(wf)} names product {wf.product!r}, "
            "which no loaded module registers with @product"
        )
    raise ConfigError(
        f"workflows: workflow {wf.name!r}{_where(wf)} names product {wf.product!r}: "
        f"{_two(wf.product, classes)}; name the class (product=TheClass)"
    )


def _two(name: str, classes: list[type[Product]]) -> str:
    where = ", ".join(f"{c.__qualname__} of module {c.__module__!r}" for c in classes)
    return f"product {name!r} is registered by more than one class ({where})"


def _where(wf: Workflow) -> str:
    """`` (file.py, line 12)``: where a workflow is defined."""
    if wf.func is None:
        return ""
    try:
        return f" ({inspect.getsourcefile(wf.func)}, line {inspect.getsourcelines(wf.func)[1]})"
    except (OSError, TypeError):
        return ""
