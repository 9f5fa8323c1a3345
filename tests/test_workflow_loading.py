"""``workflows = ["pkg"]`` registers every @workflow of the package and its submodules."""

from __future__ import annotations

import pytest

from orchd.engine import load_workflows
from orchd.errors import ConfigError


def test_a_packages_submodules_are_registered_without_importing_them_itself() -> None:
    found = load_workflows(["wfpkg"])
    assert set(found) == {"in_a_submodule", "in_a_nested_package"}


def test_a_submodule_that_fails_to_import_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"brokenpkg\.bad.*RuntimeError: bad workflow code"):
        load_workflows(["brokenpkg"])


def test_an_import_error_names_the_file_and_line_it_was_raised_at() -> None:
    with pytest.raises(ConfigError, match=r"brokenpkg/bad\.py, line 1\)"):
        load_workflows(["brokenpkg"])


def test_two_workflows_of_one_name_name_both_modules() -> None:
    with pytest.raises(ConfigError, match=r"'provision', in modules 'ident_v1' and 'ident_v2'"):
        load_workflows(["ident_v1", "ident_v2"])
