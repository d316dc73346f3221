"""The one exception hierarchy of fetchfleet.

FetchfleetError
├── UsageError              the user asked for something that cannot be done: bad input lines, a missing
│   │                       file, an unwritable output (exit code 2)
│   └── InvalidBatchId          a batch id outside the grammar (also a ValueError)
├── SettingsError           a FETCHFLEET_* variable holds a bad value (exit code 2)
├── BatchError              a batch id is unknown, or reused for different input
│   └── BatchLost               a followed batch's keys vanished from Redis or were recreated
├── OutputFailed            results could not be written out (a full disk): nothing left Redis
├── QueueUnavailable        Redis cannot be reached (transient: reconnect and retry)
├── UnsafeRedis             Redis is set up to lose data (maxmemory-policy evicts keys)
├── ServerUnavailable       `fetchfleet run`: no Redis-compatible server to start, or it would not start
├── LocalRunError           `fetchfleet run`: a local worker or the embedded server died
├── HandBack                a chunk stopped early for a graceful stop; the queue runs the rest again
├── BodyUnavailable         a result has no body to give: none was kept, or its store cannot be read
├── BodyStoreError          a worker could not make a body durable in FETCHFLEET_BODY_STORE in time; the
│                           chunk fails and runs again, and no result points at the bytes
└── FetchError              one URL could not be fetched; `kind` is the result's error kind
    ├── TransientFetchError     worth another attempt
    │   ├── ConnectFailed           kind "connect"
    │   ├── FetchTimeout            kind "timeout"  (also an asyncio.TimeoutError)
    │   └── RetryableStatus         kind "http_status", a 429/5xx still returned on the last attempt
    └── PermanentFetchError     recorded as the final result
        ├── InvalidURL              kind "invalid_url"  (also a ValueError)
        ├── Blocked                 kind "blocked"
        ├── DNSFailed               kind "dns"
        ├── TLSFailed               kind "tls"
        ├── TooManyRedirects        kind "too_many_redirects"
        ├── TooLarge                kind "too_large"
        ├── ProtocolFailed          kind "protocol"
        ├── Cancelled               kind "cancelled"
        ├── RobotsDisallowed        kind "robots": robots.txt forbids it, or could not be read
        └── InternalFailed          kind "internal": a bug met while fetching one URL

Outside the tree on purpose: ssrf.BlockedAddress is an OSError, since aiohttp's socket factory must raise
one; errormap turns it into Blocked.
"""

from __future__ import annotations

import asyncio


class FetchfleetError(Exception):
    """Base of every error fetchfleet raises on purpose."""


class SettingsError(FetchfleetError):
    pass


class UsageError(FetchfleetError):
    pass


class InvalidBatchId(UsageError, ValueError):
    """A batch id outside `contract.BATCH_ID_RE`: it could name another batch's keys."""


class BatchError(FetchfleetError):
    pass


class BatchLost(BatchError):
    """The batch's state is gone from Redis (restarted empty, flushed, evicted) or was recreated."""


class UnsafeRedis(FetchfleetError):
    """Redis would silently drop fetchfleet's keys (an evicting maxmemory-policy)."""


class OutputFailed(FetchfleetError):
    """Writing results failed (ENOSPC, EIO ...). An OSError like Redis's own connection errors, it was
    reported as "cannot reach Redis". `reason`: what failed; `then`: what became of the results."""

    def __init__(self, reason: str, then: str = "") -> None:
        super().__init__(f"{reason}; {then}" if then else reason)
        self.reason = reason


class QueueUnavailable(FetchfleetError):
    pass


class ServerUnavailable(FetchfleetError):
    """No server binary, or the server would not start."""


class LocalRunError(FetchfleetError):
    """A local worker or the embedded server died during the run."""


class HandBack(FetchfleetError):
    """Raised by a chunk that stopped early for a graceful stop; the queue runs it again elsewhere.

    Raised only after every fetch the chunk started has finished and been recorded, so the next run
    skips those (done bitmap) and fetches only what was never started: nothing is fetched twice.
    """

    def __init__(self, batch_id: str, handed_back: int) -> None:
        super().__init__(f"batch {batch_id}: {handed_back} unstarted URLs handed back")
        self.batch_id = batch_id
        self.handed_back = handed_back


class BodyUnavailable(FetchfleetError):
    """A result's body was not kept (no `body=True`, or an error result), or cannot be read back."""


class BodyStoreError(FetchfleetError):
    """A body could not be written and fsynced to the body store within FETCHFLEET_BODY_STORE_MAX_WAIT."""


class FetchError(FetchfleetError):
    kind = "internal"


class TransientFetchError(FetchError):
    pass


class PermanentFetchError(FetchError):
    pass


class ConnectFailed(TransientFetchError):
    kind = "connect"


class FetchTimeout(TransientFetchError, asyncio.TimeoutError):
    kind = "timeout"


class RetryableStatus(TransientFetchError):
    kind = "http_status"


class InvalidURL(PermanentFetchError, ValueError):
    kind = "invalid_url"


class Blocked(PermanentFetchError):
    kind = "blocked"


class DNSFailed(PermanentFetchError):
    kind = "dns"


class TLSFailed(PermanentFetchError):
    kind = "tls"


class TooManyRedirects(PermanentFetchError):
    kind = "too_many_redirects"


class TooLarge(PermanentFetchError):
    kind = "too_large"


class ProtocolFailed(PermanentFetchError):
    kind = "protocol"


class Cancelled(PermanentFetchError):
    kind = "cancelled"


class RobotsDisallowed(PermanentFetchError):
    kind = "robots"


class InternalFailed(PermanentFetchError):
    kind = "internal"
