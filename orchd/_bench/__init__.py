"""``orchd bench``: the benchmark scenarios (private; the CLI runs ``orchd._bench.run``)."""
