"""What the test suite shares, in one place (README "How it is tested").

- ``common``: in-process engines and databases (``EngineFactory``, ``engine_fixture``), waiting
  for a state instead of sleeping (``settle``, ``wait_until``, ``block_until``), the event
  stream of an in-process API read with the CLI's own SSE parser (``SseReader``), logfmt lines
  and the console's test client.
- ``daemons``: real daemon subprocesses (``DaemonFactory``, ``DaemonProcess``: config, start,
  stop, the CLI, requests and their ``Answer``, the event stream), TCP helpers, and ``make
  run``'s demo as the Makefile wires it.
- ``pg``: a PostgreSQL server and a fresh database or schema per run.
- ``soak``: the crash soak's runner.

The fixtures built on them are in tests/conftest.py; the workflow modules tests load are in
tests/wf/.
"""
