"""A workflow package that does not import its submodules (tests/test_workflow_loading.py)."""
