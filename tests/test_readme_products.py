"""The README's Products examples run as written: the products block is loaded as a workflow
module whose workflows create a typed subscription and change it; the forms block yields its
pages in turn."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import ROOT

from orchd.pages import choice_fields
from orchd.testing import workflow_engine


def products_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Products\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Products section has no Python example"
    return match.group(1)


@pytest.fixture
def example_module(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "readme_products.py").write_text(products_example())
    sys.path.insert(0, str(tmp_path))
    try:
        yield "readme_products"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("readme_products", None)


async def test_the_readme_products_example_creates_and_changes_a_router(
    example_module: str,
) -> None:
    async with workflow_engine([example_module]) as engine:
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


def test_the_readme_forms_example_yields_its_pages_in_turn(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n### Forms of several pages\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    namespace: dict[str, Any] = {}
    # dont_inherit: this test module's own `from __future__ import annotations` stays out.
    exec(compile(match.group(1), "README-forms", "exec", dont_inherit=True), namespace)
    pages = namespace["l2vpn_pages"]()
    size = next(pages)
    picker = pages.send(size(sap_count=2))
    (field,) = choice_fields(picker)
    assert field[2].product == "port" and field[2].unused and field[3]  # a list of choices
    vlan = pages.send(picker(ports=["a", "b"]))
    with pytest.raises(StopIteration) as finished:
        pages.send(vlan(vlan=7))
    assert finished.value.value == {"ports": ["a", "b"], "vlan": 7, "speed": 1000}


def test_the_readme_testing_example_passes_as_a_test_file(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Testing your workflows\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    (tmp_path / "test_readme_kit.py").write_text(match.group(1))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(tmp_path / "test_readme_kit.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
