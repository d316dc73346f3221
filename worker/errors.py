"""The one exception hierarchy of fetchfleet.

FetchfleetError
├── SettingsError           a FETCHFLEET_* variable holds a bad value (user error)
├── InputError              a submitted file has bad lines (user error); carries every problem
├── BatchError              a batch id is unknown, or reused for different input
├── QueueUnavailable        Redis cannot be reached (transient: reconnect and retry)
└── FetchError              one URL could not be fetched; `kind` is the result's error kind
    ├── TransientFetchError     worth another attempt
    │   ├── ConnectFailed           kind "connect"
    │   ├── FetchTimeout            kind "timeout"  (also an asyncio.TimeoutError)
    │   └── RetryableStatus         kind "http_status", a 429/5xx the policy retries
    └── PermanentFetchError     recorded as the final result
        ├── InvalidURL              kind "invalid_url"  (also a ValueError)
        ├── Blocked                 kind "blocked"
        ├── DNSFailed               kind "dns"
        ├── TLSFailed               kind "tls"
        ├── TooManyRedirects        kind "too_many_redirects"
        ├── TooLarge                kind "too_large"
        ├── ProtocolFailed          kind "protocol"
        ├── Cancelled               kind "cancelled"
        └── InternalFailed          kind "internal": a bug met while fetching one URL
"""

from __future__ import annotations

import asyncio


class FetchfleetError(Exception):
    """Base of every error fetchfleet raises on purpose."""


class SettingsError(FetchfleetError):
    pass


class InputError(FetchfleetError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BatchError(FetchfleetError):
    pass


class QueueUnavailable(FetchfleetError):
    pass


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


class InternalFailed(PermanentFetchError):
    kind = "internal"
