"""A package with a submodule that fails to import."""
