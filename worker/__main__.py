"""`python -m worker`: the same as `fetchfleet worker`."""

import sys

from worker.main import serve

# No arguments: settings are FETCHFLEET_* variables. `--help` (or a stray argument) must not start a
# worker against the default Redis, which is what running on would do.
if len(sys.argv) > 1:
    if sys.argv[1] in ("-h", "--help"):
        print("usage: python -m worker (the same as `fetchfleet worker`; see `fetchfleet worker --help`)")
        raise SystemExit(0)
    print(
        f"fetchfleet: a worker takes no arguments (got {sys.argv[1]!r}); settings are FETCHFLEET_* "
        "variables, see `fetchfleet worker --help`",
        file=sys.stderr,
    )
    raise SystemExit(2)
raise SystemExit(serve())
