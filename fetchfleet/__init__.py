"""fetchfleet's public Python API.

    import fetchfleet

    for result in fetchfleet.fetch(["https://example.org/"], ordered=True):
        print(result.status, result.url, len(result.text()))

`fetch`/`afetch` use the cluster in FETCHFLEET_REDIS_URL when it is set, else a private server and
local workers; `Client` submits batches and streams their `Result`s. See docs/api.md.
"""

from __future__ import annotations

from fetchfleet.client import Client
from fetchfleet.oneshot import afetch, fetch
from fetchfleet.result import Result, ResultError
from producer.client import BatchStatus
from worker.contract import BatchState, ErrorKind, FetchRequest
from worker.errors import BodyUnavailable, FetchfleetError, UsageError

__all__ = [
    "BatchState",
    "BatchStatus",
    "BodyUnavailable",
    "Client",
    "ErrorKind",
    "FetchRequest",
    "FetchfleetError",
    "Result",
    "ResultError",
    "UsageError",
    "afetch",
    "fetch",
]
