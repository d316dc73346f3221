"""Prometheus metrics of one worker process, and the cheap calls the fetch path makes to update them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from worker.contract import FetchResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Fetch times span loopback (ms) to slow origins near the total timeout (60 s by default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def outcome_of(result: FetchResult) -> str:
    """`ok` (a response below 400), `bad_status` (400 or above, no error), or the error kind."""
    if result.error is not None:
        return result.error.kind.value
    return "ok" if result.ok else "bad_status"


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


class ReadCounters(Collector):
    """Counters kept elsewhere as plain ints (e.g. the host limiter's waits), read at scrape time."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (doc, read) in self.sources.items():
            yield CounterMetricFamily(name, doc, value=read())


class WorkerMetrics:
    """Every metric the worker exposes on /metrics, in a registry of its own (one per Runtime)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.info = Info("fetchfleet_worker", "identity of this worker process", registry=r)
        self.fetches = Counter(
            "fetchfleet_fetches",
            "URLs fetched, by outcome (ok, bad_status or the error kind) and status class",
            ["outcome", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "fetchfleet_fetch_duration_seconds",
            "time of one fetch attempt, redirects included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes = Counter("fetchfleet_fetched_bytes", "response body bytes read", registry=r)
        self.in_flight = Gauge("fetchfleet_fetches_in_flight", "fetches running now", registry=r)
        self.chunks = Counter("fetchfleet_chunks", "chunk jobs finished, by result", ["result"], registry=r)
        self.retries = Counter(
            "fetchfleet_retries", "URLs sent back to the queue for another attempt", ["reason"], registry=r
        )
        self.read_counters = ReadCounters()
        self.read_counters.sources["fetchfleet_politeness_waits"] = (
            "URLs that had to wait for their host's politeness limit",
            lambda: 0,
        )
        r.register(self.read_counters)
        self.queue_depth = Gauge(
            "fetchfleet_queue_depth", "chunk jobs in the queue, queued or running (sampled)", registry=r
        )
        self.redis_up = Gauge("fetchfleet_redis_up", "1 if the last Redis check succeeded", registry=r)
        self.recorder_pending = Gauge(
            "fetchfleet_recorder_stalled_seconds",
            "how long results have waited without the recorder making progress",
            registry=r,
        )
        # Resolved label children, so the hot path does one dict lookup instead of labels() each time.
        self._fetch_children: dict[tuple[str, str], Counter] = {}

    def bind(
        self,
        worker_id: str,
        in_flight: Callable[[], float],
        stalled: Callable[[], float],
        politeness_waits: Callable[[], float],
    ) -> None:
        """Attach the live values that are read at scrape time rather than updated per fetch."""
        self.info.info({"worker_id": worker_id})
        self.in_flight.set_function(in_flight)
        self.recorder_pending.set_function(stalled)
        doc, _ = self.read_counters.sources["fetchfleet_politeness_waits"]
        self.read_counters.sources["fetchfleet_politeness_waits"] = (doc, politeness_waits)

    def fetched(self, result: FetchResult) -> None:
        """One finished fetch: the only call on the hot path."""
        key = (outcome_of(result), status_class(result.status))
        child = self._fetch_children.get(key)
        if child is None:
            child = self._fetch_children[key] = self.fetches.labels(*key)
        child.inc()
        self.latency.observe(result.elapsed_ms / 1000.0)
        if result.size:
            self.bytes.inc(result.size)

    def chunk_done(self, result: str) -> None:
        self.chunks.labels(result).inc()

    def retried(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
