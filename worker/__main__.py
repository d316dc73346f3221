"""`python -m worker`: the same as `fetchfleet worker`."""

from worker.main import serve

raise SystemExit(serve())
