"""The machinery of tests/test_soak.py: a real daemon killed and restarted, a driver, the checks.

``run_soak`` starts ``orchd serve`` on the workflows of tests/wf/soak_flows.py, kills it again
and again (SIGKILL from outside after a random delay, or from inside through ``$ORCHD_FAULTS``,
or a SIGTERM, sometimes with a fault at shutdown), and between kills drives the processes
forward through the API the way an operator and an OSS would. A last run without faults lets
everything settle; then the API and the database file are checked against each other, against
the workflows' definitions and against the effect log the steps wrote. Everything random comes
from one ``random.Random(seed)``, so a failing seed can be replayed (timing still varies).
"""

from __future__ import annotations

import http.client
import json
import math
import random
import re
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import soak_flows

from orchd.dsl import Step, StepKind, Workflow
from support.daemons import DaemonFactory, DaemonProcess

WORKFLOWS: dict[str, Workflow] = {
    wf.name: wf
    for wf in (
        soak_flows.soak_plain,
        soak_flows.soak_failing,
        soak_flows.soak_retrying,
        soak_flows.soak_suspend,
        soak_flows.soak_callback,
        soak_flows.soak_create,
        soak_flows.soak_modify,
        soak_flows.soak_terminate,
        soak_flows.soak_parallel,
        soak_flows.soak_foreach,
    )
}
#: Steps that run workflow code; each of their runs leaves a line in the effect log.
EFFECT_KINDS = (StepKind.PLAIN, StepKind.RETRY, StepKind.CALLBACK_ACTION)
#: The record status a step may leave while its process waits, by step kind.
HOLD = {
    StepKind.INPUT: {"suspended"},
    StepKind.CALLBACK_WAIT: {"awaiting_callback"},
    StepKind.PLAIN: {"failed"},
    StepKind.RETRY: {"waiting", "failed"},
    StepKind.CALLBACK_ACTION: {"failed"},
}
FINAL = ("completed", "aborted")
ACTIVE = ("created", "running", "waiting", "suspended", "awaiting_callback", "failed")
#: What a CREATE's subscription goes through afterwards, started by the driver one by one.
CHAINS = (
    [],
    ["modify"],
    ["modify", "terminate"],
    ["modify-abort", "modify"],
    ["modify", "modify-abort", "terminate"],
    ["terminate"],
)
#: Crash points for the runs that die from the inside: at the Nth pass, or by chance.
FAULT_POINTS = ("in_commit", "after_commit", "after_step", "before_step", "subscription_save")
SIGKILLED = -signal.SIGKILL
NONCE = re.compile(r"nonce=([0-9a-f]+)")


@dataclass(frozen=True)
class Params:
    seed: int
    #: Processes started from the plan (MODIFY/TERMINATE started on subscriptions come on top).
    processes: int
    #: Runs that must end in a SIGKILL before the final clean run.
    kills: int
    settle_timeout: float = 60.0
    max_kill_delay: float = 2.0


@dataclass
class Run:
    """One daemon process: how it was meant to end and how it did."""

    mode: str  # kill | fault | term | term-fault | final
    faults: str
    pid: int = 0
    code: int | None = None
    #: Whether our signal went out (a fault may have killed the daemon first).
    signalled: bool = False


@dataclass
class Figures:
    seed: int
    runs: int = 0
    kills: int = 0
    external_kills: int = 0
    fault_kills: int = 0
    graceful_stops: int = 0
    processes: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    workflows: Counter[str] = field(default_factory=Counter)
    step_records: int = 0
    effects: int = 0
    lost_runs: int = 0
    #: Starts whose answer a kill swallowed: the process may or may not exist.
    lost_starts: int = 0
    subscriptions: int = 0
    api_checked: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"soak seed={self.seed}: {self.kills} kills survived ({self.external_kills} external "
            f"SIGKILL, {self.fault_kills} from ORCHD_FAULTS) and {self.graceful_stops} SIGTERM "
            f"restarts in {self.runs} daemon runs; {self.processes} processes checked "
            f"({dict(sorted(self.statuses.items()))}), {self.step_records} step records checked, "
            f"{self.effects} step side effects of which {self.lost_runs} re-ran after a kill, "
            f"{self.subscriptions} subscriptions; driver actions "
            f"{dict(sorted(self.actions.items()))}; {self.seconds:.1f} s"
        )


# -- the daemon and its signals -------------------------------------------------------------


class Launcher:
    """Runs the daemon and signals it later from a timer thread.

    The timer and the test thread poll and signal under one lock, so the timer never signals a
    pid that the test thread has already reaped (and the system may have handed out again).
    """

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        #: Whether the timer's signal went out (a fault may have killed the daemon first).
        self.sent = False

    def spawn(self, faults: str, seed: int) -> int:
        # An empty spec disables the fault points, whatever the test's own environment says.
        self.daemon.extra_env.update(ORCHD_FAULTS=faults, ORCHD_FAULTS_SEED=str(seed))
        return self.daemon.spawn().pid

    def signal_after(self, delay: float, sig: int) -> None:
        proc = self.daemon.proc
        assert proc is not None
        self.sent = False

        def send() -> None:
            with self.lock:
                if proc.poll() is None:
                    proc.send_signal(sig)
                    self.sent = True

        self.timer = threading.Timer(delay, send)
        self.timer.daemon = True
        self.timer.start()

    def alive(self) -> bool:
        with self.lock:
            return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def end(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit (the timer's signal, or a fault); return its status."""
        assert self.daemon.proc is not None
        try:
            code = self.daemon.proc.wait(timeout)
        except Exception:
            self.daemon.kill()
            raise
        finally:
            if self.timer is not None:
                self.timer.cancel()
                self.timer.join()
                self.timer = None
        return code


# -- the API, as a client that knows the daemon may die under it ----------------------------


class NotSent(Exception):
    """Raised when a request cannot have reached the daemon (no socket, refused)."""


class Unknown(Exception):
    """Raised when the connection broke after sending: the daemon may or may not have acted."""


def call(daemon: DaemonProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        return daemon.request(method, path, body, timeout=20.0)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotSent(str(exc)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise Unknown(str(exc)) from exc


def listing(daemon: DaemonProcess, path: str, **query: str) -> list[dict[str, Any]]:
    """Every item of a paginated list."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        params = "&".join(f"{k}={v}" for k, v in {**query, "limit": "500"}.items())
        status, page = call(daemon, "GET", f"{path}?{params}&cursor={cursor}")
        if status != 200:
            raise Unknown(f"GET {path}: {status} {page}")
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]


def plan(rng: random.Random, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The processes to start, in order, with the inputs that tell the driver what to do."""
    kinds = ("plain", "failing", "retrying", "suspend", "callback", "create", "parallel", "foreach")
    starts: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        kind = rng.choices(kinds, weights=(25, 12, 12, 12, 9, 15, 8, 7))[0]
        if kind == "plain":
            body: dict[str, Any] = {
                "extra": rng.random() < 0.5,
                "abort_early": rng.random() < 0.1,
            }
        elif kind == "failing":
            body = {"fail_times": rng.randint(1, 2)}
        elif kind == "retrying":
            body = {"retry_times": rng.randint(1, 2)}
        elif kind == "suspend":
            body = {"abort_at_suspend": rng.random() < 0.2}
        elif kind == "callback":
            body = {}
        elif kind == "parallel":
            body = {"retry_times": rng.randint(0, 2)}
        elif kind == "foreach":
            size = rng.randint(0, 6)
            body = {"elements": list(range(size)), "fail_at": rng.choice((-1, 0, size - 1))}
        else:
            body = {"name": f"s{i}", "customer": f"c{i % 7}", "chain": rng.choice(CHAINS)}
        starts.append((f"soak_{kind}", body))
    return starts


class Driver:
    """Moves processes forward between kills: starts, answers, retries, callbacks, chains."""

    CHAIN_RECHECK = 0.3
    BURST = 4

    def __init__(self, daemon: DaemonProcess, starts: list[tuple[str, dict[str, Any]]]) -> None:
        self.daemon = daemon
        self.pending = deque(starts)
        self.planned = len(starts)
        self.lost_starts = 0
        self.inputs: dict[str, dict[str, Any]] = {}
        self.chains: dict[str, list[str]] = {}
        self.chain_due: dict[str, float] = {}
        self.creates_read: set[str] = set()
        self.actions: Counter[str] = Counter()

    def round(self, may_start: int) -> None:
        """One pass; raises NotSent or Unknown when the daemon goes away under it."""
        self.start_some(may_start)
        for item in listing(self.daemon, "/api/processes", status="suspended"):
            self.answer(item["id"])
        for item in listing(self.daemon, "/api/processes", status="failed"):
            self.act("retry", "POST", f"/api/processes/{item['id']}/retry")
        for item in listing(self.daemon, "/api/processes", status="awaiting_callback"):
            self.call_back(item["id"])
        self.read_creates()
        self.advance_chains()

    def act(self, what: str, method: str, path: str, body: Any = None) -> int:
        status, answer = call(self.daemon, method, path, body)
        if status in (201, 202):
            self.actions[what] += 1
        elif status not in (409, 503):  # lost a race with the process, or shutting down
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return status

    def start_some(self, may_start: int) -> None:
        # A few per round, so that starts spread over the run instead of coming in one burst.
        may_start = min(may_start, self.started + self.BURST)
        while self.pending and self.started < may_start:
            workflow, body = self.pending.popleft()
            try:
                status, answer = call(self.daemon, "POST", f"/api/processes/{workflow}", body)
            except NotSent:
                self.pending.appendleft((workflow, body))
                raise
            except Unknown:
                self.lost_starts += 1  # perhaps created: the checks count what exists
                raise
            if status == 503:
                self.pending.appendleft((workflow, body))
                return
            assert status == 201, (workflow, body, status, answer)
            self.actions["start"] += 1
            if body.get("abort_early"):
                self.act("abort", "POST", f"/api/processes/{answer['id']}/abort")

    @property
    def started(self) -> int:
        return self.planned - len(self.pending)

    def get(self, path: str) -> Any:
        status, answer = call(self.daemon, "GET", path)
        if status == 503:
            raise Unknown(f"GET {path}: shutting down")
        assert status == 200, (path, status, answer)
        return answer

    def state(self, pid: str) -> tuple[str, dict[str, Any]]:
        process = self.get(f"/api/processes/{pid}")
        return process["status"], process["state"]

    def answer(self, pid: str) -> None:
        if pid not in self.inputs:
            self.inputs[pid] = self.state(pid)[1]
        if self.inputs[pid].get("abort_at_suspend"):
            self.act("abort", "POST", f"/api/processes/{pid}/abort")
        else:
            answer = {"approved": True, "note": f"note {pid[:8]}"}
            self.act("resume", "POST", f"/api/processes/{pid}/resume", answer)

    def call_back(self, pid: str) -> None:
        status, state = self.state(pid)
        if status == "awaiting_callback":
            self.act("callback", "POST", f"/api/callbacks/{state['asked_with']}", {"ok": True})

    def read_creates(self) -> None:
        done = listing(self.daemon, "/api/processes", status="completed", workflow="soak_create")
        for item in done:
            if item["id"] not in self.creates_read:
                state = self.state(item["id"])[1]
                if state["chain"]:
                    self.chains[state["subscription_id"]] = state["chain"]
                self.creates_read.add(item["id"])

    def advance_chains(self) -> None:
        now = time.monotonic()
        for sid, chain in list(self.chains.items()):
            if self.chain_due.get(sid, 0.0) > now:
                continue
            self.chain_due[sid] = now + self.CHAIN_RECHECK
            linked = self.get(f"/api/subscriptions/{sid}")["processes"]
            if linked[-1]["status"] not in FINAL:
                continue
            if len(linked) - 1 >= len(chain):
                del self.chains[sid]
                continue
            kind = chain[len(linked) - 1]
            if kind == "terminate":
                self.act("start", "POST", "/api/processes/soak_terminate", {"subscription_id": sid})
            else:
                body = {"subscription_id": sid, "abort_at_suspend": kind == "modify-abort"}
                self.act("start", "POST", "/api/processes/soak_modify", body)

    def settled(self) -> bool:
        if self.pending or self.chains:
            return False
        status, health = call(self.daemon, "GET", "/api/health")
        if status != 200:
            return False
        busy = sum(n for s, n in health["processes"].items() if s not in FINAL)
        if busy:
            return False
        self.read_creates()  # a CREATE that completed since the last round may start a chain
        return not self.chains


# -- one soak -------------------------------------------------------------------------------


class Schedule:
    """How each run ends, drawn from the seed: every fault point and both kinds of SIGTERM
    come up early, so even a short soak meets them all."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.points: list[str] = []
        first = ["term", "term-fault", *["fault"] * len(FAULT_POINTS), "kill", "kill", "kill"]
        self.forced = rng.sample(first, len(first))

    def next(self) -> tuple[str, str, float]:
        """(mode, ORCHD_FAULTS, seconds before our signal) for the next run."""
        rng = self.rng
        if self.forced:
            mode = self.forced.pop()
        else:
            mode = rng.choices(("kill", "fault", "term", "term-fault"), weights=(45, 35, 10, 10))[0]
        delay = rng.uniform(0.15, 1.0)
        if mode == "term-fault":
            return mode, "shutdown@1", delay
        if mode != "fault":
            return mode, "", delay
        if not self.points:
            self.points = rng.sample(FAULT_POINTS, len(FAULT_POINTS))
        point = self.points.pop()
        if point == "subscription_save":
            return mode, f"{point}@{rng.randint(1, 8)}", delay  # rarer than the others
        if rng.random() < 0.5:
            return mode, f"{point}@{rng.randint(1, 150)}", delay
        return mode, f"{point}%{rng.choice((0.01, 0.02, 0.05))}", delay


def drive(launcher: Launcher, driver: Driver, may_start: int, until: float | None = None) -> bool:
    """Drive while the daemon lives (and until ``until``, if given); True once it settled."""
    while launcher.alive():
        if until is not None and time.monotonic() > until:
            return False
        try:
            driver.round(may_start)
            if until is not None and driver.settled():
                return True
        except (NotSent, Unknown):
            pass
        time.sleep(0.02)
    return False


def run_soak(factory: DaemonFactory, params: Params) -> Figures:
    rng = random.Random(params.seed)
    began = time.monotonic()
    daemon = factory(
        {
            "workflows": ["soak_flows"],
            "retry_delay": "100ms",
            "retry_max_delay": "1s",
            "retry_max_attempts": 20,
            "log_level": "warning",
        },
        name="soak",
        start=False,
    )
    (daemon.dir / "attempts").mkdir()
    log_path = daemon.dir / "effects.log"
    daemon.extra_env.update(
        ORCHD_SOAK_LOG=str(log_path), ORCHD_SOAK_DIR=str(daemon.dir / "attempts")
    )
    launcher = Launcher(daemon)
    driver = Driver(daemon, plan(rng, params.processes))
    runs: list[Run] = []
    figures = Figures(seed=params.seed)
    # Start the planned processes over the first nine tenths of the kills, so the last runs
    # still crash into recoveries, retries and chains.
    spread = max(1, math.ceil(params.kills * 0.9))
    schedule = Schedule(rng)
    while figures.kills < params.kills and len(runs) < params.kills * 3:
        mode, faults, delay = schedule.next()
        run = Run(mode, faults)
        run.pid = launcher.spawn(faults, rng.randrange(1 << 30))
        runs.append(run)
        delay *= params.max_kill_delay
        if mode in ("kill", "fault"):
            # A fault run that never meets its point is killed from outside after a while.
            launcher.signal_after(delay if mode == "kill" else 4.0, signal.SIGKILL)
        else:
            # Not before the daemon handles SIGTERM: Python's default action would kill it.
            daemon.wait_healthy()
            launcher.signal_after(delay, signal.SIGTERM)
        may_start = math.ceil(params.processes * min(1.0, (figures.kills + 1) / spread))
        drive(launcher, driver, may_start)
        run.code = launcher.end()
        run.signalled = launcher.sent
        if run.code == SIGKILLED:
            figures.kills += 1
            if mode == "kill" or (mode == "fault" and run.signalled):
                figures.external_kills += 1
            else:
                figures.fault_kills += 1
        elif run.code == 0 and mode == "term":
            figures.graceful_stops += 1
        else:
            raise AssertionError(
                f"daemon run {len(runs)} ({mode}, ORCHD_FAULTS={faults!r}) exited with "
                f"{run.code}:\n{daemon.last_run_stderr()[-4000:]}"
            )
    # The last run: no faults, drive until every process has finished, then check.
    final = Run("final", "")
    final.pid = launcher.spawn("", 0)
    runs.append(final)
    daemon.wait_healthy()
    if not drive(launcher, driver, params.processes, time.monotonic() + params.settle_timeout):
        counts = call(daemon, "GET", "/api/health")[1]
        raise AssertionError(
            f"not settled within {params.settle_timeout}s: {len(driver.pending)} starts left, "
            f"chains {driver.chains}, processes {counts}\n{daemon.last_run_stderr()[-4000:]}"
        )
    snapshot = Snapshot.read(daemon.db)
    figures.api_checked = check_api(daemon, snapshot)
    daemon.send_signal(signal.SIGTERM)
    final.code = launcher.end()
    assert final.code == 0, daemon.last_run_stderr()[-4000:]
    snapshot = Snapshot.read(daemon.db)
    # For a post-mortem of a failure: which daemon pid ran how and ended how.
    (daemon.dir / "runs.json").write_text(json.dumps([vars(run) for run in runs], indent=1))
    check_database(snapshot, log_path.read_text(), runs, figures)
    figures.runs = len(runs)
    figures.actions = driver.actions
    figures.lost_starts = driver.lost_starts
    figures.seconds = time.monotonic() - began
    return figures


# -- the checks -----------------------------------------------------------------------------


@dataclass
class Snapshot:
    integrity: str
    #: id -> the process row, with "records": [(seq, name, status, error, delta)] by seq
    processes: dict[str, dict[str, Any]]
    subscriptions: dict[str, dict[str, Any]]
    #: subscription id -> linked process ids, oldest process first
    links: dict[str, list[str]]

    @classmethod
    def read(cls, path: str) -> Snapshot:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            processes: dict[str, dict[str, Any]] = {}
            by_pk: dict[int, dict[str, Any]] = {}
            rows = conn.execute(
                "SELECT rowid, id, workflow, status, seq, state, subscription_id FROM processes"
            )
            for pk, pid, workflow, status, seq, state, sid in rows:
                process = {
                    "pk": pk,
                    "id": pid,
                    "workflow": workflow,
                    "status": status,
                    "seq": seq,
                    "state": json.loads(state),
                    "subscription_id": sid,
                    "records": [],
                }
                processes[pid] = by_pk[pk] = process
            steps = conn.execute(
                "SELECT process, seq, name, status, error, delta, branch FROM steps "
                "ORDER BY process, seq"
            )
            for pk, seq, name, status, error, delta, branch in steps:
                record = (seq, name, status, error, json.loads(delta) if delta else {}, branch)
                by_pk[pk]["records"].append(record)
            subscriptions = {}
            columns = (
                "id, product, customer_id, description, status, insync, start_date, end_date, "
                "version, note"
            )
            for row in conn.execute(f"SELECT {columns}, attributes FROM subscriptions"):
                sub = dict(zip(columns.split(", "), row[:-1], strict=True))
                sub["insync"] = bool(sub["insync"])
                sub["attributes"] = json.loads(row[-1])
                subscriptions[sub["id"]] = sub
            links: dict[str, list[str]] = defaultdict(list)
            for sid, pid in conn.execute(
                "SELECT l.subscription_id, l.process_id FROM subscription_processes l "
                "JOIN processes p ON p.id = l.process_id ORDER BY p.rowid"
            ):
                links[sid].append(pid)
        finally:
            conn.close()
        return cls(integrity, processes, subscriptions, dict(links))


def expected_statuses(process: dict[str, Any]) -> tuple[str, ...]:
    state = process["state"]
    if state.get("abort_at_suspend"):
        return ("aborted",)
    if state.get("abort_early"):
        return ("aborted", "completed")  # an abort requested while running may come too late
    return ("completed",)


def branch_steps(wf: Workflow, branch: str | None) -> tuple[Step, ...]:
    """The steps a record of ``branch`` ("Split/1", "Fan/3") belongs to."""
    if branch is None:
        return wf.steps
    key, index = branch.split("/")
    fork = next(s for s in wf.steps if s.key == key)
    return fork.branches[0 if fork.kind is StepKind.FOREACH else int(index)]


def check_records(process: dict[str, Any]) -> list[str]:
    """The step log must be one valid run of the workflow, and of each of its branches."""
    wf = WORKFLOWS[process["workflow"]]
    records, where = process["records"], f"process {process['id']}"
    if [r[0] for r in records] != list(range(1, len(records) + 1)) or process["seq"] != len(
        records
    ):
        return [f"{where}: seqs {[r[0] for r in records]}, process seq {process['seq']}"]
    problems: list[str] = []
    branches = sorted({r[5] for r in records if r[5] is not None})
    for branch in [None, *branches]:
        mine = [r for r in records if r[5] == branch]
        problems += check_run(process, branch_steps(wf, branch), mine, branch)
    return problems + check_failures(process)


def check_run(
    process: dict[str, Any],
    steps: tuple[Step, ...],
    records: list[tuple[Any, ...]],
    branch: str | None,
) -> list[str]:
    """One line's records (the main line's, or one branch's) are a valid run of its steps."""
    state = process["state"]
    where = f"process {process['id']}" + (f" branch {branch}" if branch else "")
    problems: list[str] = []
    pc, held = 0, False
    for i, (_, name, status, *_) in enumerate(records):
        if status == "aborted":
            if name != "abort" or i != len(records) - 1:
                problems.append(f"{where}: abort record {i + 1} of {len(records)}")
            return problems
        if pc >= len(steps):
            return [*problems, f"{where}: record {i + 1} {name!r} after its last step"]
        step = steps[pc]
        if name != step.name:
            return [*problems, f"{where}: record {i + 1} is {name!r}, step {step.name!r} is due"]
        if status == "success":
            pc, held = pc + 1, False
            if step.predicates and not step.should_run(state):
                problems.append(f"{where}: {name!r} ran though its condition is false")
        elif status == "skipped":
            pc, held = pc + 1, False
            if not step.predicates or step.should_run(state):
                problems.append(f"{where}: {name!r} skipped though it had to run")
        elif status in HOLD.get(step.kind, ()):
            if held and status in ("suspended", "awaiting_callback"):
                problems.append(f"{where}: {name!r} recorded {status} twice in a row")
            held = True
        else:
            problems.append(f"{where}: record {i + 1} {name!r} has status {status!r}")
    if process["status"] == "completed" and pc != len(steps):
        problems.append(f"{where}: completed at step {pc + 1} of {len(steps)}")
    return problems


def check_failures(process: dict[str, Any]) -> list[str]:
    """A step fails at most as often as the input planned (the attempt count outlives kills)."""
    state = process["state"]
    failures = Counter(label(r) for r in process["records"] if r[2] in ("failed", "waiting"))
    allowed = {
        "flaky": state.get("fail_times", 0),
        "call-oss": state.get("retry_times", 0),
        "right@Split/1": state.get("retry_times", 0),
        f"fan-work@Fan/{state.get('fail_at')}": 1,
        # A fork whose branch failed is recorded once it joins, never failed itself.
    }
    return [
        f"process {process['id']}: {name!r} failed {n} times, planned {allowed.get(name, 0)}"
        for name, n in failures.items()
        if n > allowed.get(name, 0)
    ]


def label(record: tuple[Any, ...]) -> str:
    """How a step record's run is named in the effect log: ``name@branch`` in a branch."""
    name, branch = record[1], record[5]
    return name if branch is None else f"{name}@{branch}"


def committed_nonces(process: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """[(nonce, step, outcome)] of the process's effect-step records by seq, and problems."""
    wf = WORKFLOWS[process["workflow"]]
    kinds = {s.name: s.kind for s in wf.steps}
    for fork in (s for s in wf.steps if s.forks):
        kinds.update((s.name, s.kind) for branch in fork.branches for s in branch)
    found: list[tuple[str, str, str]] = []
    problems: list[str] = []
    last_success: dict[str, str] = {}
    for record in process["records"]:
        seq, name, status, error, delta, _ = record
        if kinds.get(name) not in EFFECT_KINDS or status == "skipped":
            continue
        name = label(record)
        if status == "success":
            nonce = delta.get(soak_flows.RAN + name)
            last_success[name] = nonce
            outcome = "ok"
        else:
            match = NONCE.search(error or "")
            nonce = match.group(1) if match else None
            outcome = "fail"
        if not nonce:
            problems.append(f"process {process['id']}: record {seq} {name!r} has no nonce")
            continue
        found.append((nonce, name, outcome))
    for name, nonce in last_success.items():
        if "@Fan/" in name:
            # A foreach's branches changed State under "fanned", once joined.
            if process["status"] != "completed":
                continue
            fanned = process["state"]["fanned"][int(name.rsplit("/", 1)[1])]
            if fanned.get(soak_flows.RAN + name) != nonce:
                problems.append(f"process {process['id']}: {name!r} {nonce} not in {fanned}")
            continue
        if "@" in name and process["status"] != "completed":
            continue  # a parallel branch's changes come into State when it joins
        if process["state"].get(soak_flows.RAN + name) != nonce:
            problems.append(
                f"process {process['id']}: State has {name!r} run "
                f"{process['state'].get(soak_flows.RAN + name)}, its last record {nonce}"
            )
    return found, problems


def check_effects(snapshot: Snapshot, log: str, runs: list[Run]) -> tuple[int, int, list[str]]:
    """Each committed step ran exactly once, except the one in flight at a kill, which ran
    again at the next start. Returns (effects, lost runs, problems)."""
    problems: list[str] = []
    ended = {run.pid: run.code for run in runs}
    entries: dict[str, tuple[int, str, str, int, str]] = {}  # nonce -> (line, pid, step, ...)
    per_process: dict[str, list[str]] = defaultdict(list)
    for n, line in enumerate(log.splitlines()):
        parts = line.split(" ")
        if len(parts) != 5 or parts[2] in entries:
            problems.append(f"effect log line {n + 1} malformed or repeated: {line!r}")
            continue
        pid, step, nonce, daemon_pid, outcome = parts
        entries[nonce] = (n, pid, step, int(daemon_pid), outcome)
        # Each branch is a line of its own: its runs follow each other, not the others'.
        per_process[f"{pid}@{step.partition('@')[2]}"].append(nonce)
    committed: set[str] = set()
    for process in snapshot.processes.values():
        found, more = committed_nonces(process)
        problems += more
        lines = []
        for nonce, step, outcome in found:
            entry = entries.get(nonce)
            if entry is None or entry[1:3] != (process["id"], step) or entry[4] != outcome:
                problems.append(f"process {process['id']}: {step!r} record {nonce}: log {entry}")
                continue
            committed.add(nonce)
            lines.append(entry[0])
        if process["workflow"] not in ("soak_parallel", "soak_foreach") and lines != sorted(lines):
            # (Branches interleave: their records' order is checked per branch by check_run.)
            problems.append(f"process {process['id']}: records out of the effect log's order")
    lost = 0
    for line, nonces in per_process.items():
        pid = line.partition("@")[0]
        in_run: Counter[int] = Counter()
        for i, nonce in enumerate(nonces):
            if nonce in committed:
                continue
            lost += 1
            _, _, step, daemon_pid, _ = entries[nonce]
            in_run[daemon_pid] += 1
            where = f"process {pid}: {step!r} run {nonce} (daemon {daemon_pid})"
            if ended.get(daemon_pid) != SIGKILLED:
                problems.append(f"{where} left no record, yet that daemon was not killed")
            following = entries[nonces[i + 1]] if i + 1 < len(nonces) else None
            if following is None:
                if snapshot.processes.get(pid, {}).get("status") != "aborted":
                    problems.append(f"{where} left no record and never ran again")
            elif following[2] != step or following[3] == daemon_pid:
                problems.append(f"{where} lost, then {following[2]!r} ran in {following[3]}")
        problems += [
            f"process {pid}: {n} uncommitted steps in the one daemon run {d}"
            for d, n in in_run.items()
            if n > 1
        ]
    return len(entries), lost, problems


def check_subscriptions(snapshot: Snapshot) -> list[str]:
    problems: list[str] = []
    for sid, row in snapshot.subscriptions.items():
        linked = [snapshot.processes[p] for p in snapshot.links.get(sid, [])]
        if not linked or linked[0]["workflow"] != "soak_create":
            problems.append(f"subscription {sid}: linked to {[p['workflow'] for p in linked]}")
            continue
        last = linked[-1]
        held = dict(last["state"].get("subscription") or {})
        if last["status"] == "aborted" and last["workflow"] != "soak_create":
            # Abort releases the subscription and keeps the State as it was (README "Guarantees").
            held["insync"] = True
        if row != held:
            problems.append(f"subscription {sid}: row {row} but {last['id']} holds {held}")
        if all(p["status"] in FINAL for p in linked) and not row["insync"]:
            problems.append(f"subscription {sid}: still locked, its processes have finished")
        terminated = last["workflow"] == "soak_terminate" and last["status"] == "completed"
        if (row["status"] == "terminated") != terminated:
            problems.append(f"subscription {sid}: status {row['status']} after {last['id']}")
        bumps = sum(
            1
            for p in linked
            if p["workflow"] == "soak_modify"
            and any(r[1] == "bump" and r[2] == "success" for r in p["records"])
        )
        if row["attributes"].get("bumps") != bumps:
            problems.append(f"subscription {sid}: bumps {row['attributes']} after {bumps} bumps")
    for process in snapshot.processes.values():
        sid = process["subscription_id"]
        if process["workflow"] in ("soak_create", "soak_modify", "soak_terminate") and (
            sid not in snapshot.subscriptions or process["id"] not in snapshot.links.get(sid, [])
        ):
            problems.append(f"process {process['id']}: subscription {sid} missing or not linked")
    return problems


def check_database(snapshot: Snapshot, log: str, runs: list[Run], figures: Figures) -> None:
    problems: list[str] = []
    if snapshot.integrity != "ok":
        problems.append(f"PRAGMA integrity_check: {snapshot.integrity}")
    for process in snapshot.processes.values():
        figures.statuses[process["status"]] += 1
        figures.workflows[process["workflow"]] += 1
        figures.step_records += len(process["records"])
        if process["status"] not in expected_statuses(process):
            problems.append(
                f"process {process['id']} ({process['workflow']}): {process['status']}, "
                f"expected {' or '.join(expected_statuses(process))}"
            )
        problems += check_records(process)
    figures.processes = len(snapshot.processes)
    figures.effects, figures.lost_runs, more = check_effects(snapshot, log, runs)
    problems += more
    problems += check_subscriptions(snapshot)
    figures.subscriptions = len(snapshot.subscriptions)
    assert not problems, f"seed {figures.seed}: {len(problems)} problems:\n" + "\n".join(
        problems[:40]
    )


def check_api(daemon: DaemonProcess, snapshot: Snapshot) -> int:
    """The API shows what the database holds: every process, its steps, every subscription."""
    listed = {item["id"]: item["status"] for item in listing(daemon, "/api/processes")}
    assert listed == {pid: p["status"] for pid, p in snapshot.processes.items()}
    for pid, process in snapshot.processes.items():
        status, shown = call(daemon, "GET", f"/api/processes/{pid}")
        assert status == 200, (pid, status, shown)
        steps = [(s["name"], s["status"]) for s in shown["steps"]]
        assert shown["status"] == process["status"], (pid, shown["status"], process["status"])
        assert steps == [(r[1], r[2]) for r in process["records"]], (pid, steps)
        assert shown["state"] == process["state"], pid
    for sid, row in snapshot.subscriptions.items():
        status, shown = call(daemon, "GET", f"/api/subscriptions/{sid}")
        assert status == 200, (sid, status, shown)
        assert {k: shown[k] for k in row} == row, (sid, shown, row)
        assert [p["id"] for p in shown["processes"]] == snapshot.links[sid], sid
    return len(snapshot.processes)
