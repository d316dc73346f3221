"""Retry policy as data: which failures get another attempt, and how long the attempt waits."""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from worker.contract import ChunkJob, ErrorKind, FetchRequest, RejectedRequest, retry_job_id
from worker.enqueue import enqueue_chunks
from worker.settings import Settings

# Only failures where the same request can plausibly succeed later; DNS, TLS, blocked and the like
# would fail the same way again.
RETRY_KINDS = frozenset({ErrorKind.CONNECT.value, ErrorKind.TIMEOUT.value})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    kinds: frozenset[str] = RETRY_KINDS
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_max: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base <= 0 or self.backoff_cap <= 0 or self.retry_after_max < 0:
            raise ValueError("backoff base and cap must be positive, retry_after_max not negative")

    @classmethod
    def from_settings(cls, s: Settings) -> RetryPolicy:
        return cls(
            max_attempts=s.max_attempts,
            statuses=frozenset(s.retry_statuses),
            backoff_base=s.retry_backoff_base,
            backoff_cap=s.retry_backoff_cap,
            retry_after_max=s.retry_after_max,
        )

    def should_retry(self, attempts: int, status: int | None, kind: str | None, method: str = "GET") -> bool:
        """`attempts` made so far, the last one's status and error kind (None when it succeeded)."""
        if attempts >= self.max_attempts:
            return False
        if kind is not None:
            # A POST that timed out may have been acted on already; sending it again could do it twice.
            # A failed connect sent nothing, so that one is safe to repeat.
            if method not in IDEMPOTENT_METHODS and kind == ErrorKind.TIMEOUT.value:
                return False
            return kind in self.kinds
        return status is not None and status in self.statuses

    def delay(self, attempts: int, retry_after: str | None = None, now: float | None = None) -> float:
        """Seconds before the next attempt: full jitter over a capped exponential, or Retry-After.

        Full jitter (uniform over [0, base * 2^(n-1)]) spreads the retries of many URLs that failed
        together; a server's Retry-After wins when it asks for longer, up to `retry_after_max`.
        """
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** max(attempts - 1, 0))
        wait = random.uniform(0, ceiling)
        asked = parse_retry_after(retry_after, now)
        if asked is not None:
            wait = max(wait, min(asked, self.retry_after_max))
        return wait


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # RFC 9110 delay-seconds: ASCII digits (float() refuses "²")
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zoneless one is not one
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


async def schedule_retry(
    redis: Redis,
    settings: Settings,
    job: ChunkJob,
    index: int,
    request: FetchRequest | RejectedRequest | str,
    attempts: int,
    delay: float,
) -> None:
    """Queue the next attempt of one URL as its own deferred job: the wait holds no fetch slot.

    The job id names the index and attempt, so a chunk run twice queues the retry once.
    """
    retry = ChunkJob(
        batch_id=job.batch_id,
        incarnation=job.incarnation,
        first_index=index,
        requests=[request],
        indexes=[index],
        attempts=[attempts],
        options=job.options,
    )
    job_id = retry_job_id(job.batch_id, index, attempts + 1)
    await enqueue_chunks(redis, settings, [(job_id, retry)], defer_ms=int(delay * 1000))
