"""Tools for testing workflows: a fake OSS to talk to, and (later) the authoring kit."""
