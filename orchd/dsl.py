"""The workflow DSL: steps, step lists, and the ``workflow`` decorator.

A workflow is flattened, when it is defined, into a tuple of ``Step``s that the actor runs in
order. Conditionals become predicates on the steps they wrap, a ``callback_step`` becomes
three steps (action, wait, validate), and a ``parallel`` or ``foreach`` stays one step that
holds its branches' flattened steps (README "Parallel branches").

Where a process stands is recorded as a *position*: the key of its next step (``key=``, by
default the step's name) and which occurrence of that key it is in the list. A process
continues at its key in whatever code is loaded when it goes on, so steps added, removed or
reordered elsewhere in the list do not matter (README "Changing workflows safely"); a list of steps
finds positions
with ``Positions``.
"""

from __future__ import annotations

import enum
import inspect
import re
import string
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, overload

import msgspec

from orchd.errors import WorkflowDefinitionError
from orchd.model import FORMLESS, SubscriptionStatus, Target
from orchd.pages import Pages, is_pages
from orchd.products import Product
from orchd.state import Param, signature_params

State: TypeAlias = dict[str, Any]
Predicate: TypeAlias = Callable[[State], Any]


class Form(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base class of input forms; its JSON Schema is what the API publishes."""


class StepKind(enum.Enum):
    PLAIN = "plain"  # runs, merges its result
    RETRY = "retry"  # like PLAIN, but an exception makes the process waiting
    INPUT = "input"  # returns a Form class; the process suspends until answered
    CALLBACK_ACTION = "callback_action"  # runs with a fresh callback token in State
    CALLBACK_WAIT = "callback_wait"  # the process awaits the callback here
    CHILDREN = "children"  # starts child processes and waits until they have finished
    PARALLEL = "parallel"  # runs its branches concurrently, then merges what they changed
    FOREACH = "foreach"  # runs its branch once per element of a list, then collects
    INIT = "init"  # built-in first step
    DONE = "done"  # built-in last step: completes the process
    ABORT = "abort"  # built-in: ends the process as aborted


@dataclass(frozen=True, eq=False)
class Step:
    """One step of a workflow; compose with ``>>``."""

    name: str
    func: Callable[..., Any] | None
    kind: StepKind = StepKind.PLAIN
    #: The step's identity across code changes ("" means its name).
    key: str = ""
    params: tuple[Param, ...] = ()
    is_async: bool = False
    predicates: tuple[Predicate, ...] = ()
    #: Per-step limits; None means "use the engine's default".
    timeout: float | None = None
    max_attempts: int | None = None
    backoff: float | None = None
    #: For CALLBACK_WAIT: how long the process may wait for the callback.
    callback_timeout: float | None = None
    #: For CHILDREN: the children's workflow, the State key of their inputs, where their
    #: results go, and how many may be unfinished (and started) at once.
    child_workflow: str = ""
    items_key: str = ""
    into: str | None = None
    max_concurrency: int | None = None
    #: For PARALLEL: its branches; for FOREACH: the one branch run per element (also uses
    #: ``items_key``, ``into`` and ``max_concurrency``). Positions find a branch's steps.
    branches: tuple[tuple[Step, ...], ...] = ()
    branch_positions: tuple[Positions, ...] = ()
    #: The shared resources the step takes before it runs (README "Limits on shared resources"):
    #: ``"limit"`` or
    #: ``"limit:{state_key}..."``, each key filled from State.
    uses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if self.branches and not self.branch_positions:
            positions = tuple(Positions(b) for b in self.branches)
            object.__setattr__(self, "branch_positions", positions)

    @property
    def forks(self) -> bool:
        """Whether the step runs branches (``parallel`` or ``foreach``)."""
        return self.kind in (StepKind.PARALLEL, StepKind.FOREACH)

    def __rshift__(self, other: Step | StepList) -> StepList:
        return StepList([self]) >> other

    def __rrshift__(self, other: Step | StepList) -> StepList:
        return _as_steplist(other) >> self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function directly (handy in unit tests of a single step)."""
        if self.func is None:
            raise TypeError(f"built-in step {self.name!r} cannot be called")
        return self.func(*args, **kwargs)

    def should_run(self, state: State) -> bool:
        return all(predicate(state) for predicate in self.predicates)


class StepList:
    """An ordered list of steps; ``a >> b`` makes a new list, never changing either side."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        self._steps = tuple(steps)

    def __rshift__(self, other: Step | StepList) -> StepList:
        return StepList(self._steps + _as_steplist(other)._steps)

    def __rrshift__(self, other: Step | StepList) -> StepList:
        return _as_steplist(other) >> self

    def __iter__(self) -> Iterator[Step]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    @overload
    def __getitem__(self, index: int) -> Step: ...
    @overload
    def __getitem__(self, index: slice) -> StepList: ...
    def __getitem__(self, index: int | slice) -> Step | StepList:
        if isinstance(index, slice):
            return StepList(self._steps[index])
        return self._steps[index]

    def __repr__(self) -> str:
        return f"StepList([{', '.join(step.name for step in self._steps)}])"


def _as_steplist(value: Step | StepList) -> StepList:
    if isinstance(value, StepList):
        return value
    if isinstance(value, Step):
        return StepList([value])
    raise WorkflowDefinitionError(f"cannot compose {value!r}: expected a step or a StepList")


begin = StepList()


def _make_step(func: Callable[..., Any], name: str, kind: StepKind, **options: Any) -> Step:
    if isinstance(func, Step):
        raise WorkflowDefinitionError(f"step {name!r}: the function is already a step")
    if not callable(func):
        raise WorkflowDefinitionError(f"step {name!r}: decorate a function")
    return Step(
        name=name,
        func=func,
        kind=kind,
        params=signature_params(func, name),
        is_async=inspect.iscoroutinefunction(func),
        **options,
    )


def _check_name(name: object, decorator: str) -> str:
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError(
            f"{decorator}() takes the step's name, e.g. @{decorator}('x')"
        )
    return name


def _check_key(key: object, name: str) -> str:
    if key is None:
        return name
    if not isinstance(key, str) or not key:
        raise WorkflowDefinitionError(f"step {name!r}: key must be a non-empty string")
    return key


#: A limit's name in ``uses=`` (and in ``[limits]``): no colon, no braces, no spaces.
LIMIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_uses(uses: object, name: str) -> tuple[str, ...]:
    """``uses=`` of a step: ``["router:{node_name}", "oss"]``; each entry a limit's name,
    optionally ``:`` and a key whose ``{fields}`` are State keys (README "Limits on shared
    resources")."""
    if uses is None:
        return ()
    if isinstance(uses, str) or not isinstance(uses, list | tuple):
        raise WorkflowDefinitionError(
            f"step {name!r}: uses must be a list of resources, e.g. uses=['router:{{node}}']"
        )
    checked = []
    for entry in uses:
        if not isinstance(entry, str):
            raise WorkflowDefinitionError(f"step {name!r}: uses: {entry!r} is not a string")
        limit, _, key = entry.partition(":")
        if not LIMIT_NAME.fullmatch(limit):
            raise WorkflowDefinitionError(
                f"step {name!r}: uses {entry!r}: a resource is a limit's name (letters, digits, "
                "'_', '.', '-'), then optionally ':' and its key, e.g. 'router:{node_name}'"
            )
        try:
            fields = list(string.Formatter().parse(key))
        except ValueError as exc:
            raise WorkflowDefinitionError(f"step {name!r}: uses {entry!r}: {exc}") from None
        for _, field_name, spec, conversion in fields:
            if field_name is not None and (
                not field_name.isidentifier() or spec or conversion is not None
            ):
                raise WorkflowDefinitionError(
                    f"step {name!r}: uses {entry!r}: {{{field_name}}} must name a State key "
                    "as {key} (no index, attribute, conversion or format)"
                )
        checked.append(entry)
    return tuple(checked)


def step(
    name: str,
    *,
    key: str | None = None,
    timeout: float | None = None,
    uses: list[str] | tuple[str, ...] | None = None,
) -> Callable[[Callable[..., Any]], Step]:
    """Turn a function (sync or async) into a step; its result is merged into State.

    ``key`` is the step's identity across code changes (default: its name); rename a step
    and keep its key, and processes standing at it go on at the renamed step. ``uses`` names
    the shared resources it takes before it runs (README "Limits on shared resources").
    """
    _check_name(name, "step")
    key = _check_key(key, name)
    used = _check_uses(uses, name)
    return lambda func: _make_step(func, name, StepKind.PLAIN, key=key, timeout=timeout, uses=used)


def retrystep(
    name: str,
    *,
    key: str | None = None,
    max_attempts: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
    uses: list[str] | tuple[str, ...] | None = None,
) -> Callable[[Callable[..., Any]], Step]:
    """Like ``step``, but an exception makes the process ``waiting`` and retried later."""
    _check_name(name, "retrystep")
    key = _check_key(key, name)
    used = _check_uses(uses, name)
    if max_attempts is not None and max_attempts < 1:
        raise WorkflowDefinitionError(f"retrystep {name!r}: max_attempts must be at least 1")
    if backoff is not None and backoff <= 0:
        raise WorkflowDefinitionError(f"retrystep {name!r}: backoff must be positive")
    return lambda func: _make_step(
        func,
        name,
        StepKind.RETRY,
        key=key,
        max_attempts=max_attempts,
        backoff=backoff,
        timeout=timeout,
        uses=used,
    )


def inputstep(name: str, *, key: str | None = None) -> Callable[[Callable[..., Any]], Step]:
    """Suspend the process until a user answers the Form class the function returns."""
    _check_name(name, "inputstep")
    key = _check_key(key, name)
    return lambda func: _make_step(func, name, StepKind.INPUT, key=key)


def callback_step(
    name: str,
    action_step: Step,
    validate_step: Step,
    *,
    key: str | None = None,
    timeout: float | None = None,
) -> StepList:
    """Run ``action_step``, wait for an external callback, then run ``validate_step``.

    The action may read ``state["callback_token"]`` and hand it to the external system, which
    posts its answer to ``/api/callbacks/{token}``; the answer lands in
    ``state["callback_result"]`` before ``validate_step`` runs. ``key`` is the wait's key
    (default ``name``); the action and validate steps keep their own.
    """
    _check_name(name, "callback_step")
    key = _check_key(key, name)
    for role, given in (("action_step", action_step), ("validate_step", validate_step)):
        if not isinstance(given, Step) or given.func is None:
            raise WorkflowDefinitionError(f"callback_step {name!r}: {role} must be a step")
    action = replace(action_step, kind=StepKind.CALLBACK_ACTION)
    wait = Step(
        name=name, func=None, kind=StepKind.CALLBACK_WAIT, key=key, callback_timeout=timeout
    )
    return StepList([action, wait, validate_step])


def callback_action_of(steps: Sequence[Step], at: int) -> int | None:
    """Where a callback is asked again from (``retry --reissue``): the index of the action of
    the ``callback_step`` whose wait or validate step is ``steps[at]``; ``None`` when
    ``steps[at]`` is neither. The engine goes back there, and the console offers the reissue
    only where this finds one."""
    if at >= 1 and steps[at].kind is not StepKind.CALLBACK_WAIT:
        at -= 1  # the validate step follows the wait
    if at >= 1 and steps[at].kind is StepKind.CALLBACK_WAIT:
        return at - 1
    return None


def _check_fan_out(where: str, into: Any, max_concurrency: Any) -> None:
    """The options ``children`` and ``foreach`` share: where results go, how many at once."""
    if into is not None and (not isinstance(into, str) or not into):
        raise WorkflowDefinitionError(f"{where}: into must be a State key")
    if max_concurrency is not None and (
        not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise WorkflowDefinitionError(f"{where}: max_concurrency must be at least 1")


def children(
    name: str,
    *,
    workflow: str,
    inputs: str,
    max_concurrency: int | None = None,
    into: str | None = None,
    key: str | None = None,
) -> Step:
    """Start one child process of ``workflow`` per element of the list ``state[inputs]`` (each
    element its input) and wait until every child has completed or been aborted (README "Child
    processes").
    ``workflow="{key}"`` starts the workflow whose name State holds under ``key``.

    The children are created together with this step's checkpoint, or none is. At most
    ``max_concurrency`` are unfinished and started at once; the others wait as ``created``.
    With ``into``, ``state[into]`` gets ``{"id", "status", "state"}`` per child, in input order.
    """
    _check_name(name, "children")
    key = _check_key(key, name)
    for what, value in (("workflow", workflow), ("inputs", inputs)):
        if not isinstance(value, str) or not value:
            raise WorkflowDefinitionError(f"children {name!r}: {what} must be a name")
    _check_fan_out(f"children {name!r}", into, max_concurrency)
    return Step(
        name=name,
        func=None,
        kind=StepKind.CHILDREN,
        key=key,
        child_workflow=workflow,
        items_key=inputs,
        into=into,
        max_concurrency=max_concurrency,
    )


#: What a branch may hold (README "Parallel branches"): no input (nobody answers a form inside a
#: branch),
#: no built-ins, no child processes.
_IN_BRANCH = {
    StepKind.PLAIN,
    StepKind.RETRY,
    StepKind.CALLBACK_ACTION,
    StepKind.CALLBACK_WAIT,
    StepKind.PARALLEL,
    StepKind.FOREACH,
}


def _branch(where: str, given: object) -> tuple[Step, ...]:
    if isinstance(given, Step):
        given = StepList([given])
    if not isinstance(given, StepList):
        raise WorkflowDefinitionError(f"{where}: a branch is a StepList, e.g. begin >> a >> b")
    for s in given:
        if s.kind is StepKind.INPUT:
            raise WorkflowDefinitionError(
                f"{where}: inputstep {s.name!r} cannot stand in a branch (nobody could answer "
                "its form while the other branches run); put it before or after the fork"
            )
        if s.kind not in _IN_BRANCH:
            raise WorkflowDefinitionError(
                f"{where}: {s.kind.value} step {s.name!r} cannot stand in a branch"
            )
    return tuple(given)


def _fork_key(key: str | None, name: str) -> str:
    key = _check_key(key, name)
    if "/" in key:
        # A branch is named by its fork's key and index, joined with "/" ("A/0/B/3").
        raise WorkflowDefinitionError(
            f"fork {name!r}: its key {key!r} may not contain '/' (give key= without one)"
        )
    return key


def parallel(name: str, *branches: StepList | Step, key: str | None = None) -> Step:
    """Run two or more branches concurrently, each from a copy of State at the fork, and merge
    what each changed once all have finished (README "Parallel branches"). Two branches setting one
    key to
    different values fail the step, naming the key and both branches."""
    _check_name(name, "parallel")
    key = _fork_key(key, name)
    if len(branches) < 2:
        raise WorkflowDefinitionError(f"parallel {name!r}: give two or more branches")
    where = f"parallel {name!r}"
    return Step(
        name=name,
        func=None,
        kind=StepKind.PARALLEL,
        key=key,
        branches=tuple(_branch(f"{where} branch {i}", b) for i, b in enumerate(branches)),
    )


def foreach(
    name: str,
    items_key: str,
    branch: StepList | Step,
    *,
    into: str | None = None,
    max_concurrency: int | None = None,
    key: str | None = None,
) -> Step:
    """Run ``branch`` once per element of the list ``state[items_key]``, at most
    ``max_concurrency`` at once (README "Parallel branches"). A branch starts from the fork's State
    plus
    ``item`` and ``item_index`` (and a dict element's keys); with ``into``, what each branch
    changed is listed under ``state[into]`` in element order."""
    _check_name(name, "foreach")
    key = _fork_key(key, name)
    where = f"foreach {name!r}"
    if not isinstance(items_key, str) or not items_key:
        raise WorkflowDefinitionError(f"{where}: items_key must be a State key")
    _check_fan_out(where, into, max_concurrency)
    return Step(
        name=name,
        func=None,
        kind=StepKind.FOREACH,
        key=key,
        items_key=items_key,
        into=into,
        max_concurrency=max_concurrency,
        branches=(_branch(where, branch),),
    )


def conditional(predicate: Predicate) -> Callable[[Step | StepList], StepList]:
    """Run the wrapped steps only when ``predicate(state)`` is true; else record them skipped."""
    if not callable(predicate):
        raise WorkflowDefinitionError("conditional() takes a predicate: lambda state: ...")

    def wrap(steps: Step | StepList) -> StepList:
        return StepList(
            replace(s, predicates=s.predicates + (predicate,)) for s in _as_steplist(steps)
        )

    return wrap


init = Step(name="init", func=None, kind=StepKind.INIT)
done = Step(name="done", func=None, kind=StepKind.DONE)
abort = Step(name="abort", func=None, kind=StepKind.ABORT)


@dataclass(frozen=True, eq=False)
class Workflow:
    """A registered workflow: its flattened steps and what the API shows of it."""

    name: str
    description: str
    target: Target
    steps: tuple[Step, ...]
    form: type[Form] | None = None
    module: str = ""
    func: Callable[[], StepList] | None = field(default=None, repr=False)
    #: A form of several pages (a generator function yielding Form classes), instead of
    #: ``form``; see ``orchd.pages``.
    pages: Pages | None = field(default=None, repr=False)
    #: The product it is tied to (its name), and the statuses of a subscription it may start
    #: on (None: any but terminated; a CREATE has none).
    product: str | None = None
    usable_when: tuple[str, ...] | None = None
    #: The product's class, when the workflow names it by its class.
    product_class: type[Product] | None = field(default=None, repr=False)
    positions: Positions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", Positions(self.steps))

    def __call__(self) -> StepList:
        return StepList(self.steps)

    def locate(self, key: str | None, occurrence: int, index: int, current_step: str | None) -> int:
        """Where a process recorded at this position goes on in this code; raises Stranded
        when it cannot (README "Changing workflows safely"). Rows from before step keys (``key``
        None) stand at
        ``index``, which holds only while the step there has the name they recorded."""
        if key is not None:
            found = self.positions.index(key, occurrence)
            if found is None:
                raise Stranded(f"workflow changed: step key {key!r} no longer exists")
            return found
        if current_step is not None and (
            index >= len(self.steps) or self.steps[index].name != current_step
        ):
            raise Stranded(
                f"workflow {self.name!r} changed: step {current_step!r} "
                f"is no longer step {index + 1}"
            )
        return index


def branch_steps(fork: Step, path: str) -> tuple[Step, ...] | None:
    """The steps of the branch ``path`` ("A/0", nested "A/0/B/3") of ``fork``, the step whose
    key the path starts with; None when the code has no such branch."""
    parts = path.split("/")
    step: Step | None = fork
    steps: tuple[Step, ...] | None = None
    for i in range(0, len(parts), 2):
        index = parts[i + 1] if i + 1 < len(parts) else ""
        if step is None or not step.forks or step.key != parts[i] or not index.isdigit():
            return None
        if step.kind is StepKind.FOREACH:
            steps = step.branches[0]
        elif int(index) < len(step.branches):
            steps = step.branches[int(index)]
        else:
            return None
        if i + 2 < len(parts):
            step = next((s for s in steps if s.key == parts[i + 2]), None)
    return steps


class Stranded(Exception):
    """Raised when a process's position does not exist in the workflow code loaded now."""


class Positions:
    """Positions in a list of steps: ``(key, occurrence)`` to an index and back.

    The occurrence counts earlier steps with the same key, so the third ``bump`` of a list is
    ``("bump", 2)`` wherever the list puts it.
    """

    __slots__ = ("_at", "_index")

    def __init__(self, steps: Iterable[Step]) -> None:
        seen: dict[str, int] = {}
        self._at: list[tuple[str, int]] = []
        for s in steps:
            occurrence = seen.get(s.key, 0)
            seen[s.key] = occurrence + 1
            self._at.append((s.key, occurrence))
        self._index = {position: i for i, position in enumerate(self._at)}

    def at(self, index: int) -> tuple[str, int]:
        """The position of the step at ``index``."""
        return self._at[index]

    def index(self, key: str, occurrence: int = 0) -> int | None:
        """Where the position is in this list, or None when the list has no such step."""
        return self._index.get((key, occurrence))


#: Every workflow defined so far, by module; the Engine picks the ones of the modules it loads.
REGISTRY: dict[str, dict[str, Workflow]] = {}


def workflow(
    description: str,
    initial_input_form: type[Form] | Pages | None = None,
    target: Target = Target.CREATE,
    *,
    product: str | type[Product] | None = None,
    usable_when: Iterable[str] | None = None,
) -> Callable[[Callable[[], StepList]], Workflow]:
    """Register the decorated function's StepList as a workflow named after the function.

    ``product`` ties it to a product (a name or a registered ``Product`` class);
    ``usable_when`` lists the subscription statuses it may start on (default ``("active",)``
    for a product's MODIFY, TERMINATE, VALIDATE and RECONCILE workflows)."""
    if not isinstance(description, str):
        raise WorkflowDefinitionError("workflow() takes a description string first")
    target = Target(target)
    product_name = _product_name(product)

    def register(func: Callable[[], StepList]) -> Workflow:
        name = func.__name__
        steps = _as_steplist(func())
        given: Any = initial_input_form
        pages: Pages | None = given if is_pages(given) else None
        form: Any = None if pages is not None else given
        _validate(name, steps, target, form)
        if pages is not None and target in FORMLESS:
            raise WorkflowDefinitionError(f"workflow {name!r}: a {target} workflow takes no form")
        usable = _usable_when(name, target, product_name, usable_when)
        module = getattr(func, "__module__", "") or ""
        wf = Workflow(
            name=name,
            description=description,
            target=target,
            steps=tuple(steps),
            form=form,
            module=module,
            func=func,
            pages=pages,
            product=product_name,
            usable_when=usable,
            product_class=product if isinstance(product, type) else None,
        )
        REGISTRY.setdefault(module, {})[name] = wf
        return wf

    return register


def _product_name(product: str | type[Product] | None) -> str | None:
    if product is None or isinstance(product, str):
        return product or None
    if isinstance(product, type) and issubclass(product, Product) and product.product_name:
        return product.product_name
    raise WorkflowDefinitionError(
        f"workflow(product={product!r}): name a product, or a class registered with @product"
    )


def _usable_when(
    name: str, target: Target, product: str | None, given: Iterable[str] | None
) -> tuple[str, ...] | None:
    where = f"workflow {name!r}"
    if product is not None and target is Target.SYSTEM:
        raise WorkflowDefinitionError(f"{where}: a SYSTEM workflow (task) has no product")
    if given is None:
        if product is None or target is Target.CREATE:
            return None
        return ("active",)
    if target is Target.CREATE or target is Target.SYSTEM:
        raise WorkflowDefinitionError(
            f"{where}: usable_when is for workflows that start on an existing subscription"
        )
    statuses = (given,) if isinstance(given, str) else tuple(given)
    unknown = [s for s in statuses if s not in _SUBSCRIPTION_STATUSES]
    if unknown or not statuses:
        raise WorkflowDefinitionError(
            f"{where}: usable_when takes subscription statuses "
            f"({', '.join(sorted(_SUBSCRIPTION_STATUSES))}), not {list(unknown or statuses)!r}"
        )
    return statuses


_SUBSCRIPTION_STATUSES = frozenset(s.value for s in SubscriptionStatus)


def _validate(name: str, steps: StepList, target: Target, form: Any) -> None:
    where = f"workflow {name!r}"
    if len(steps) < 2 or steps[0] is not init or steps[-1] is not done:
        raise WorkflowDefinitionError(f"{where}: its steps must start with init and end with done")
    for s in steps[1:-1]:
        if s.kind in (StepKind.INIT, StepKind.DONE):
            raise WorkflowDefinitionError(f"{where}: {s.name} may only stand first or last")
    if form is not None and not (isinstance(form, type) and issubclass(form, msgspec.Struct)):
        raise WorkflowDefinitionError(
            f"{where}: initial_input_form must be a Form subclass, or a generator function "
            "yielding Form classes (a form of several pages)"
        )
    if target in FORMLESS and form is not None:
        raise WorkflowDefinitionError(f"{where}: a {target} workflow takes no input form")


def workflows_of(module_name: str) -> dict[str, Workflow]:
    """Workflows defined in a module or its submodules (the module must be imported)."""
    found: dict[str, Workflow] = {}
    for mod, entries in REGISTRY.items():
        if mod == module_name or mod.startswith(module_name + "."):
            found.update(entries)
    module = sys.modules.get(module_name)
    for value in vars(module).values() if module else ():
        if isinstance(value, Workflow):
            found[value.name] = value
    return found
