"""Support code for the tests and the benchmark: a private redis-server, worker and CLI processes with
their environment, HTTP targets in a thread, RSS and CPU readings.

`tests/` and `ops/bench/` both import it as `tests.support.<module>`; both run from the repository root
(pytest's rootdir, `python -m ops.bench.bench`), so no `sys.path` edit is needed. It is not shipped:
pyproject's package list names only the product's packages. Importing this package loads nothing.
"""
