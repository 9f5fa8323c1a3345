"""Every Python and shell block of the README runs here, as written (issue 30 item 5).

``test_every_block_of_the_readme_is_run_by_a_test`` finds each ```` ```python ```` and
```` ```sh ```` block by its section and number and fails when one has no test below, so an
example added or changed without a test that runs it fails the suite. Workflow modules are
loaded as modules and their workflows run to the end; snippets run inside the test that gives
them what they name; shell blocks run through ``bash`` against a real daemon, with ``orchd``
the installed CLI and its config found the documented way (``$ORCHD_CONFIG``). Placeholders
(``ID``, ``TOKEN``, ``5d3c…``, ``<id>``) are replaced by the ids of processes and subscriptions
put in the state the command needs; nothing else in a command is changed. Commands that need
root and systemd (``sudo``, ``systemctl``) or another host (``ssh``) are not run: their tests
check what those commands name exists and does what the README says, each says how.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import importlib
import json
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.common import settle
from support.daemons import (
    ROOT,
    WF_DIR,
    DaemonFactory,
    DaemonProcess,
    fake_oss,
    free_port,
    make_run_demo,
    run_demo,
    tcp_request,
)

import orchd
from orchd.http import HttpClient
from orchd.pages import choice_fields
from orchd.testing import FakeOss, workflow_engine

README = ROOT / "README.md"
RUNNABLE = ("python", "sh")


@dataclass(frozen=True)
class Block:
    section: str
    number: int
    lang: str
    text: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.section} #{self.number}"


def readme_blocks() -> list[Block]:
    """The README's Python and shell blocks, each named by its section and its number there."""
    blocks: list[Block] = []
    numbers: Counter[str] = Counter()
    section, lang, start, body = "", None, 0, []
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if lang is None and line.startswith("```"):
            lang, start, body = line[3:].strip(), n, []
        elif lang is not None and line == "```":
            if lang in RUNNABLE:
                numbers[section] += 1
                text = "\n".join(body) + "\n"
                blocks.append(Block(section, numbers[section], lang, text, start))
            lang = None
        elif lang is not None:
            body.append(line)
        elif re.match(r"#{2,3} ", line):
            section = line.lstrip("#").strip()
    return blocks


def block(block_id: str) -> str:
    found = [b for b in readme_blocks() if b.id == block_id]
    assert found, f"the README has no block {block_id!r}"
    return found[0].text


def commands(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comment lines and ``$ `` prompts
    dropped, the output lines that follow a ``$ `` command left out."""
    joined = text.replace("\\\n", " ")
    prompts = any(line.startswith("$ ") for line in joined.splitlines())
    found = []
    for line in joined.splitlines():
        if prompts and not line.startswith("$ "):
            continue
        line = line.removeprefix("$ ")
        if shlex.split(line, comments=True):
            found.append(line)
    return found


def without_comment(command: str) -> str:
    """The command as a shell runs it: its ``# ...`` comment dropped (quotes respected)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    return shlex.join(words)


#: Each runnable block and the test that runs it.
RUN_BY = {
    "Two commands #1": "test_the_two_commands_are_targets_of_the_makefile",
    "Writing workflows #1": "test_the_first_workflow_runs_as_the_snippet_after_it_says",
    "Writing workflows #2": "test_the_first_workflow_runs_as_the_snippet_after_it_says",
    "Testing your workflows #1": "test_the_testing_example_passes_as_a_test_file",
    "Products #1": "test_the_products_example_creates_and_changes_a_router",
    "Products #2": "test_the_products_commands_run_against_the_demo_network",
    "Forms of several pages #1": "test_the_forms_example_yields_its_pages_in_turn",
    "Forms of several pages #2": "test_the_form_requests_run_against_the_demo_network",
    "Parallel branches #1": "test_the_parallel_example_gathers_facts_and_configures_each_port",
    "Child processes #1": "test_the_children_example_redeploys_each_router_in_a_child",
    "Changing workflows safely #1": "test_the_deploy_recipe_checks_the_new_code_before_a_restart",
    "Running under systemd #1": "test_the_systemd_commands_install_files_that_exist",
    "The CLI #1": "test_every_cli_example_runs_against_a_daemon",
    "The HTTP API #1": "test_the_curl_examples_run_against_a_daemon",
    "Web console #1": "test_the_console_answers_through_a_tunnel_to_its_socket",
    "Talking to OSS/BSS systems #1": "test_the_polling_example_waits_until_the_node_is_active",
    "Giving steps resources #1": "test_the_resource_factory_example_gives_a_step_its_client",
    "Limits on shared resources #1": "test_the_limits_example_runs_its_steps_under_their_limits",
    "Scaling out #1": "test_the_postgresql_extra_the_readme_installs_exists",
}


def test_every_block_of_the_readme_is_run_by_a_test() -> None:
    found = {b.id for b in readme_blocks()}
    assert found == set(RUN_BY), "a README block without a test, or a test for a gone block"
    names = {n for n, v in globals().items() if n.startswith("test_") and callable(v)}
    assert set(RUN_BY.values()) <= names


# -- helpers ----------------------------------------------------------------------------------


def write_module(folder: Path, name: str, source: str) -> Path:
    """``source`` as module ``name`` (dotted: a package with it) in ``folder``; the folder."""
    *packages, module = name.split(".")
    where = folder.joinpath(*packages)
    where.mkdir(parents=True, exist_ok=True)
    for depth in range(len(packages)):
        folder.joinpath(*packages[: depth + 1], "__init__.py").touch()
    (where / f"{module}.py").write_text(source)
    return folder


def beside_tests(folder: Path) -> dict[str, str]:
    """A daemon's environment that imports from ``folder`` too (tests/wf and orchd as always)."""
    return {"PYTHONPATH": f"{folder}:{WF_DIR}:{ROOT}"}


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    """Writes a module into a folder on this process's sys.path; forgets them afterwards."""
    folder = tmp_path / "mods"
    loaded: list[str] = []

    def load(name: str, source: str) -> str:
        write_module(folder, name, source)
        loaded.append(name)
        return name

    sys.path.insert(0, str(folder))
    yield load
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m.split(".")[0] in {n.split(".")[0] for n in loaded}]:
        del sys.modules[name]


def operator_env(daemon: DaemonProcess, pythonpath: Path | None = None) -> dict[str, str]:
    """What an operator in the daemon's directory has: orchd on PATH, $ORCHD_CONFIG set."""
    env = daemon.environment()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["ORCHD_CONFIG"] = str(daemon.config_path)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}:{env['PYTHONPATH']}"
    return env


def shell(
    command: str, daemon: DaemonProcess, pythonpath: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``command`` run by bash in the daemon's directory, as an operator there would."""
    return subprocess.run(
        ["bash", "-c", command], cwd=daemon.dir, env=operator_env(daemon, pythonpath),
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# -- the blocks -------------------------------------------------------------------------------


def test_the_two_commands_are_targets_of_the_makefile() -> None:
    # `make run` is run by tests/test_make_run_demo.py as the Makefile wires it, and `make
    # test` is what CI runs; here each must be a target make knows (a dry run of both).
    targets = [shlex.split(c, comments=True) for c in commands(block("Two commands #1"))]
    assert targets == [["make", "run"], ["make", "test"]]
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "run", "test"], capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr


async def test_the_first_workflow_runs_as_the_snippet_after_it_says(
    modules: Callable[[str, str], str],
) -> None:
    modules("mypkg.workflows", block("Writing workflows #1"))
    snippet = block("Writing workflows #2")
    code = "async def snippet():\n" + "".join(f"    {line}\n" for line in snippet.splitlines())
    namespace: dict[str, Any] = {"orchd": orchd}
    exec(compile(code, "README-testing-snippet", "exec", dont_inherit=True), namespace)
    await namespace["snippet"]()  # it asserts the node completed with its name


def test_the_testing_example_passes_as_a_test_file(tmp_path: Path) -> None:
    (tmp_path / "test_readme_kit.py").write_text(block("Testing your workflows #1"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(tmp_path / "test_readme_kit.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


async def test_the_products_example_creates_and_changes_a_router(
    modules: Callable[[str, str], str],
) -> None:
    name = modules("readme_products", block("Products #1"))
    async with workflow_engine([name]) as engine:
        created = await engine.wait(
            await engine.start("create_router", {"name": "r1", "ims_id": 4})
        )
        assert created.status == "completed", created.error
        sid = created.state["subscription_id"]
        renamed = await engine.wait(
            await engine.start("rename_router", {"subscription_id": sid, "new_name": "r2"})
        )
        assert renamed.status == "completed", renamed.error
        sub = await engine.get_subscription(sid)
        assert sub.product == "router" and sub.attributes["node"] == {"name": "r2", "ims_id": 4}
        assert {p.name for p in engine.products()} >= {"router", "router_port"}


def test_the_forms_example_yields_its_pages_in_turn() -> None:
    namespace: dict[str, Any] = {}
    # dont_inherit: this test module's own `from __future__ import annotations` stays out.
    source = block("Forms of several pages #1")
    exec(compile(source, "README-forms", "exec", dont_inherit=True), namespace)
    pages = namespace["l2vpn_pages"]()
    size = next(pages)
    picker = pages.send(size(sap_count=2))
    (field,) = choice_fields(picker)
    assert field[2].product == "port" and field[2].unused and field[3]  # a list of choices
    vlan = pages.send(picker(ports=["a", "b"]))
    with pytest.raises(StopIteration) as finished:
        pages.send(vlan(vlan=7))
    assert finished.value.value == {"ports": ["a", "b"], "vlan": 7, "speed": 1000}


async def test_the_parallel_example_gathers_facts_and_configures_each_port(
    modules: Callable[[str, str], str],
) -> None:
    name = modules("readme_parallel", block("Parallel branches #1"))
    ports = [{"port": "xe-0/0/1", "vlan": 100}, {"port": "xe-0/0/2", "vlan": 200}]
    async with FakeOss() as oss, workflow_engine([name]) as engine:
        node = await oss_node(oss)
        given = {"oss_url": oss.url, "node_id": node, "mgmt_host": "localhost", "ports": ports}
        process = await engine.wait(await engine.start("provision_node", given))
        assert process.status == "completed", process.error
        assert process.state["inventory"]["id"] == node
        assert process.state["mgmt_address"].startswith("127.")
        assert [r["configured"] for r in process.state["port_results"]] == ["xe-0/0/1", "xe-0/0/2"]
        assert oss.nodes[node]["vlan_xe-0/0/2"] == 200


async def oss_node(oss: FakeOss) -> str:
    async with HttpClient() as http:
        made = await http.post_json(f"{oss.url}/nodes", {"name": "n1", "customer_id": "c1"})
    return str(made["id"])


async def test_the_children_example_redeploys_each_router_in_a_child(
    modules: Callable[[str, str], str],
) -> None:
    name = modules("readme_children", block("Child processes #1"))
    async with workflow_engine([name]) as engine:
        pid = await engine.start("redeploy_region", {"region": "ams"})
        process = await settle(engine, pid, "completed", "failed")
        assert process.status == "completed", process.error
        assert process.state["redeployed"] == ["ams-r1", "ams-r2", "ams-r3"]
        page = await engine.list_processes(parent=process.id)
        children = [await engine.get(c.id) for c in page.items]
        assert sorted(c.state["router"] for c in children) == ["ams-r1", "ams-r2", "ams-r3"]


async def test_the_polling_example_waits_until_the_node_is_active(
    modules: Callable[[str, str], str],
) -> None:
    name = modules("readme_polling", block("Talking to OSS/BSS systems #1"))
    example = importlib.import_module(name)
    async with FakeOss(provision_time=0.3) as oss:
        example.OSS = oss.url  # the block's inventory, here the fake one

        def wait_for_node() -> orchd.StepList:
            return orchd.init >> example.wait_until_active >> orchd.done

        flow = orchd.workflow("Wait for a node", target=orchd.Target.SYSTEM)(wait_for_node)
        async with workflow_engine([flow]) as engine:
            node = await oss_node(oss)
            process = await engine.wait(await engine.start("wait_for_node", {"node_id": node}))
    assert process.status == "completed", process.error
    assert process.state["node"]["status"] == "active"


RESOURCES_PRELUDE = '''\
from contextlib import asynccontextmanager

from orchd import State, Target, done, init, step, workflow

URL = "http://inventory.example:8080"


class InventoryClient:
    """A client that is open only inside its context, as a real one's connections are."""

    def __init__(self, url: str) -> None:
        self.url, self.open = url, False

    async def __aenter__(self) -> "InventoryClient":
        self.open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.open = False

'''

RESOURCES_STEP = """

@step("look up the node")
def lookup(node_id: str, inv: InventoryClient) -> State:
    return {"inventory": inv.url, "client_open": inv.open}


@workflow("Look up a node", target=Target.SYSTEM)
def look_up_node():
    return init >> lookup >> done
"""


def test_the_resource_factory_example_gives_a_step_its_client(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    # The block is a fragment: InventoryClient and URL are the reader's; they come first, and
    # a step annotated as the block's comment says uses what the factory yields.
    source = RESOURCES_PRELUDE + block("Giving steps resources #1") + RESOURCES_STEP
    folder = write_module(tmp_path / "mods", "readme_resources", source)
    daemon = daemon_factory(
        {"workflows": ["readme_resources"], "resources": ["readme_resources:factory"]},
        env=beside_tests(folder),
    )
    process = daemon.wait_process(daemon.start_process("look_up_node", {"node_id": "n1"}))
    assert process["status"] == "completed", process
    assert process["state"]["inventory"] == "http://inventory.example:8080"
    assert process["state"]["client_open"] is True


@pytest.fixture
def oss_url(tmp_path: Path) -> Iterator[str]:
    """``orchd fake-oss`` on a free port; its URL."""
    port = free_port()
    with fake_oss(port, ["--port", str(port), "--provision-time", "0.2"], tmp_path) as url:
        yield url


def test_the_limits_example_runs_its_steps_under_their_limits(
    tmp_path: Path, daemon_factory: DaemonFactory, oss_url: str
) -> None:
    source = block("Limits on shared resources #1")
    constant = 'OSS = "http://inventory.example:8080"'
    assert constant in source
    module = source.replace(constant, f'OSS = "{oss_url}"')
    folder = write_module(tmp_path / "mods", "readme_limits", module)
    readme = README.read_text()
    after = readme[readme.index(source) + len(source) :]
    limits = re.search(r"```toml\n(.*?)```", after, re.DOTALL)
    assert limits is not None and "[limits]" in limits.group(1)
    daemon = daemon_factory(
        {"workflows": ["readme_limits"]},
        raw_config=limits.group(1),
        env=beside_tests(folder),
    )
    oss = urlsplit(oss_url)
    node_body = {"name": "r1", "customer_id": "c1"}
    status, node = tcp_request(oss.hostname or "", oss.port or 80, "POST", "/nodes", node_body)
    assert status == 201
    given = {"node_name": "r1", "node_id": node["id"], "config": "hostname r1"}
    pids = [daemon.start_process("reconfigure_router", given) for _ in range(3)]
    for pid in pids:
        process = daemon.wait_process(pid)
        assert process["status"] == "completed", process
        assert process["state"]["pushed"] and process["state"]["registered"]
    shown = daemon.cli("resources")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in shown.stdout.splitlines()[1:3]}
    assert rows == {"oss": ["20", "10/s"], "router": ["1", "-"]}, shown.stdout


# -- against the demo network (`make run`'s) ---------------------------------------------------


@pytest.fixture
def demo_network(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    """`make run`'s daemon and fake OSS, with the demo's network built (nodes, ports, a core
    link, an L2VPN)."""
    with make_run_demo(daemon_factory) as daemon:
        built = run_demo(daemon)
        assert built.returncode == 0, built.stderr
        yield daemon


def subscriptions_of(daemon: DaemonProcess) -> list[dict[str, Any]]:
    status, page = daemon.request("GET", "/api/subscriptions?limit=100")
    assert status == 200
    return list(page["items"])


def test_the_products_commands_run_against_the_demo_network(demo_network: DaemonProcess) -> None:
    port = next(
        s for s in subscriptions_of(demo_network) if s["description"] == "lon-edge-1 xe-0/0/1"
    )
    lines = commands(block("Products #2"))
    assert len(lines) == 5
    refused, *others = [shell(c.replace("5d3c…", port["id"]), demo_network) for c in lines]
    # `orchd start terminate_port ...`: refused, naming who uses the port; exit 1.
    assert refused.returncode == 1, refused
    assert re.search(
        rf"subscription {port['id'][:4]}\S* is in use by \S+ \(HTTP 409, reason in_use\)",
        refused.stderr,
    ), refused.stderr
    for done in others:
        assert done.returncode == 0, done
    shown, found, products, _note = (d.stdout for d in others)
    assert "core_link" in shown  # in use by
    assert "ams-core-1" in found and "lon-edge-1" not in found  # -q ams
    assert {"node", "port", "core_link", "l2vpn"} <= set(products.split())
    _, detail = demo_network.request("GET", f"/api/subscriptions/{port['id']}")
    assert detail["note"] == "fibre cut, ticket 4711"


def test_the_form_requests_run_against_the_demo_network(demo_network: DaemonProcess) -> None:
    node = next(
        s for s in subscriptions_of(demo_network) if s["description"] == "core node ams-core-1"
    )
    for name in ("xe-0/0/3", "xe-0/0/4"):  # the demo's L2VPN took its free ports
        pid = demo_network.start_process("create_port", {"node": node["id"], "name": name})
        assert demo_network.wait_process(pid, timeout=60)["status"] == "completed"
    free = sorted(
        s["id"]
        for s in subscriptions_of(demo_network)
        if s["description"] in ("ams-core-1 xe-0/0/3", "ams-core-1 xe-0/0/4")
    )
    lines = commands(block("Forms of several pages #2"))
    first = without_comment(lines[0])
    prefix = first[: first.index(" -d ")]
    answers = []
    for line in lines:
        command = line.replace("curl ...", prefix)
        for port_id in free:  # each "<id>" of a line in turn
            command = command.replace("<id>", port_id, 1)
        done = shell(command, demo_network)
        assert done.returncode == 0, done
        answers.append(json_of(done.stdout))
    page0, page1, refused, finished = answers
    assert page0["page"] == 0 and "sap_count" in page0["form"]["properties"]
    offered = {c["const"] for c in choices_in(page1["form"])}
    assert page1["page"] == 1 and set(free) <= offered
    assert refused["status"] == 422 and refused["errors"][0]["loc"] == ["pages", 1, "ports", 1]
    assert finished == {"done": True} or finished.get("done") is True


def json_of(text: str) -> Any:
    return json.loads(text)


def choices_in(schema: Any) -> list[dict[str, Any]]:
    """Every ``{"const": ..., "title": ...}`` choice anywhere in a JSON Schema."""
    if isinstance(schema, dict):
        found = [schema] if "const" in schema and "title" in schema else []
        return found + [c for v in schema.values() for c in choices_in(v)]
    if isinstance(schema, list):
        return [c for v in schema for c in choices_in(v)]
    return []


# -- the CLI and the HTTP API, against a daemon on the README's first module ------------------


@pytest.fixture
def readme_daemon(tmp_path: Path, daemon_factory: DaemonFactory) -> tuple[DaemonProcess, Path]:
    """A daemon on ``mypkg.workflows`` (the README's first module) and tests/wf/readme_flows.py
    (what the CLI block acts on); the folder that holds ``mypkg``."""
    pkgs = write_module(tmp_path / "pkgs", "mypkg.workflows", block("Writing workflows #1"))
    daemon = daemon_factory(
        {"workflows": ["mypkg.workflows", "readme_flows"]}, env=beside_tests(pkgs)
    )
    return daemon, pkgs


def started(daemon: DaemonProcess, workflow: str, status: str, given: Any = None) -> str:
    pid = daemon.start_process(workflow, {} if given is None else given)
    process = daemon.wait_process(pid, statuses=(status,))
    assert process["status"] == status, process
    return pid


#: The CLI block's streaming commands: they follow until stopped, so the test reads their first
#: line and stops them.
FOLLOWING = ("events",)


def test_every_cli_example_runs_against_a_daemon(
    tmp_path: Path, readme_daemon: tuple[DaemonProcess, Path]
) -> None:
    daemon, pkgs = readme_daemon
    parent = started(daemon, "create_nodes", "completed")
    retried, skipped, retried_by_bot = (started(daemon, "refused_push", "failed") for _ in range(3))
    resumed, aborted = (started(daemon, "maintenance", "suspended") for _ in range(2))
    answered, answered_by_token = (
        started(daemon, "order_port_externally", "awaiting_callback") for _ in range(2)
    )
    token = (daemon.test_dir / f"{answered_by_token}.token").read_text()
    retried_again = started(daemon, "refused_push", "failed")  # what `events` sees

    def retry(pid: str) -> None:
        status, answer = daemon.request("POST", f"/api/processes/{pid}/retry")
        assert status in (200, 202, 409), answer  # 409: still running from the last poke

    ids = {
        "resume": resumed, "retry": retried, "abort": aborted, "skip": skipped,
        "callback": answered, "--reporter": retried_by_bot, "events": retried_again,
    }  # fmt: skip
    ran = []
    for line in commands(block("The CLI #1")):
        words = shlex.split(line, comments=True)
        verb = words[1]
        given = {"ID": ids.get(verb, parent), "TOKEN": token, "3f2a9c1e": parent[:8],
                 "/var/backups/orchd.db": str(tmp_path / "backup.db")}  # fmt: skip
        command = shlex.join([given.get(w, w) for w in words])
        if verb in FOLLOWING:
            first = first_line_of(command, daemon, poke=lambda: retry(retried_again))
            assert json_of(first) if "--json" in words else first.strip(), command
        elif words[1:3] == ["check", "--workflows"]:
            # The processes of readme_flows are not in mypkg.workflows: the new code would
            # strand them, and the command says so with exit 1, as the comment promises.
            done = shell(command, daemon, pythonpath=pkgs)
            assert done.returncode == 1, (command, done.stdout, done.stderr)
            assert "would be stranded" in done.stdout
        else:
            done = shell(command, daemon, pythonpath=pkgs)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
        ran.append(verb)
    assert len(ran) == 25
    # What the commands did, as the README's comments say.
    assert daemon.get_process(resumed)["status"] in ("running", "completed")
    assert daemon.get_process(aborted)["status"] == "aborted"
    assert daemon.get_process(skipped)["status"] != "failed"
    for pid in (answered, answered_by_token):
        assert daemon.wait_process(pid)["status"] == "completed"
    audit = daemon.get_process(retried_by_bot)["actions"]
    assert any(a["action"] == "retry" and "deploy-bot" in a["actor"] for a in audit), audit
    assert (tmp_path / "backup.db").stat().st_size > 0


def first_line_of(command: str, daemon: DaemonProcess, poke: Callable[[], object]) -> str:
    """The first line a following command prints; ``poke`` makes an event, again every half
    second until one is printed (the command may not be listening yet), for 20 s at most."""
    follower = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=daemon.dir, env=operator_env(daemon), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: lines.put(follower.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    try:
        for _ in range(40):
            poke()
            try:
                return lines.get(timeout=0.5)
            except queue.Empty:
                continue
        raise AssertionError(f"{command!r} printed nothing in 20 s")
    finally:
        follower.kill()
        follower.communicate()
        reader.join()


def test_the_curl_examples_run_against_a_daemon(
    readme_daemon: tuple[DaemonProcess, Path],
) -> None:
    daemon, _ = readme_daemon
    failed = started(daemon, "refused_push", "failed")
    health, start, listed, events, metrics = commands(block("The HTTP API #1"))
    outputs = {}
    for name, command in (("health", health), ("start", start), ("list", listed),
                          ("metrics", metrics)):  # fmt: skip
        done = shell(command, daemon)
        assert done.returncode == 0, (command, done.stderr)
        outputs[name] = done.stdout
    assert json_of(outputs["health"])["status"] == "ok"
    pid = json_of(outputs["start"])["id"]
    assert daemon.wait_process(pid)["state"]["name"] == "n1"
    assert [p["id"] for p in json_of(outputs["list"])["items"]] == [failed]
    assert "orchd_" in outputs["metrics"]
    poke = functools.partial(daemon.start_process, "create_node", {"name": "n2"})
    assert first_line_of(without_comment(events), daemon, poke).strip()


OLD_CODE = """

from orchd import inputstep


class Approval(Form):
    approved: bool


@inputstep("approve")
async def approve() -> type[Form]:
    return Approval


@workflow("Create a node after an approval", target=Target.CREATE)
def create_approved_node():
    return init >> approve >> create_subscription >> activate >> done
"""


def test_the_deploy_recipe_checks_the_new_code_before_a_restart(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    # The running code has a workflow the new code (the README's first module) drops.
    old, new = tmp_path / "old", tmp_path / "new"
    write_module(old, "mypkg.workflows", block("Writing workflows #1") + OLD_CODE)
    write_module(new, "mypkg.workflows", block("Writing workflows #1"))
    daemon = daemon_factory({"workflows": ["mypkg.workflows"]}, env=beside_tests(old))
    waiting = started(daemon, "create_approved_node", "suspended", {"name": "n1"})
    (check,) = commands(block("Changing workflows safely #1"))
    stranded = shell(check, daemon, pythonpath=new)
    assert stranded.returncode == 1, stranded
    assert waiting in stranded.stdout
    # 2. ... abort them; then the check passes and the restart is safe.
    assert daemon.cli("abort", waiting).returncode == 0
    clear = shell(check, daemon, pythonpath=new)
    assert clear.returncode == 0, clear


def test_the_systemd_commands_install_files_that_exist() -> None:
    # Not run: they need root and systemd. Every file they install is in the repository
    # (tests/test_systemd_units.py verifies the units with systemd-analyze), the user they
    # create is the one the unit runs as, and the socket the last line gives access to is the
    # one the unit's runtime directory and the CLI's default name.
    lines = commands(block("Running under systemd #1"))
    sources = [w for c in lines for w in shlex.split(c, comments=True)
               if "/" in w and not w.startswith(("/", "-"))]  # fmt: skip
    assert sources == [
        "systemd/orchd.service", "systemd/orchd.socket", "systemd/orchd.sysusers",
        "config/orchd.toml",
    ]  # fmt: skip
    for source in sources:
        assert (ROOT / source).is_file(), source
    service = (ROOT / "systemd/orchd.service").read_text()
    assert re.search(r"^User=orchd$", service, re.M)
    assert re.search(r"^RuntimeDirectory=orchd$", service, re.M)
    assert re.search(r"^ExecReload=.*HUP", service, re.M)
    assert re.search(r"^u!? orchd ", (ROOT / "systemd/orchd.sysusers").read_text(), re.M)
    assert any("usermod -aG orchd" in c for c in lines)
    assert "/run/orchd/orchd.sock" in (ROOT / "orchd/cli.py").read_text()


def test_the_postgresql_extra_the_readme_installs_exists() -> None:
    # Not run (it installs into /opt): the extra it names is declared, and brings the driver.
    (install, restart) = commands(block("Scaling out #1"))
    assert "'orchd[postgresql]'" in install and "daemon-reload" in restart
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("asyncpg") for d in project["optional-dependencies"]["postgresql"])


def test_the_console_answers_through_a_tunnel_to_its_socket(
    daemon_factory: DaemonFactory,
) -> None:
    # `ssh -N -L 8470:/run/orchd/orchd.sock` forwards a local TCP port to the socket; here a
    # relay in this test does what ssh does, and the browser's request (Host localhost:8470)
    # gets the console.
    (tunnel,) = commands(block("Web console #1"))
    assert tunnel.startswith("ssh -N -L 8470:/run/orchd/orchd.sock ")
    daemon = daemon_factory()
    with tcp_to_unix(daemon.socket) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/ui/", headers={"Host": f"localhost:{port}"})
        answer = conn.getresponse()
        body = answer.read().decode()
        conn.close()
    assert answer.status == 200, (answer.status, body)
    assert "<html" in body.lower()


@contextlib.contextmanager
def tcp_to_unix(path: str) -> Iterator[int]:
    """A local TCP port whose connections are relayed to the Unix socket ``path``."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    opened: list[socket.socket] = []
    relays: list[threading.Thread] = []

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(path)
            opened.extend((client, upstream))
            for ends in ((client, upstream), (upstream, client)):
                relays.append(threading.Thread(target=pipe, args=ends, daemon=True))
                relays[-1].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for relay in relays:
            relay.join(10)
        for sock in (*opened, server):
            sock.close()
