"""Prometheus metrics of one worker process, and the cheap calls the fetch path makes to update them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class FetchCounts(Collector):
    """Per-fetch figures kept as plain ints and floats, turned into metrics only when scraped.

    prometheus_client's Counter and Histogram take a lock and walk their buckets on every update:
    ~1.5 us a URL (ops/bench); here an update is a few dict and list operations.
    """

    def __init__(self) -> None:
        self.by_outcome: dict[tuple[str, str], int] = {}
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0
        self.bytes = 0

    def add(self, outcome: str, status: int | None, elapsed_s: float, size: int) -> None:
        key = (outcome, f"{status // 100}xx" if status else "none")
        self.by_outcome[key] = self.by_outcome.get(key, 0) + 1
        # bisect_left: a value equal to a bound falls in that bound's bucket (le is "<=").
        self.bucket_counts[bisect_left(LATENCY_BUCKETS, elapsed_s)] += 1
        self.seconds += elapsed_s
        self.bytes += size

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        fetches = CounterMetricFamily(
            "fetchfleet_fetches",
            "URLs fetched, by outcome (ok, bad_status or the error kind) and status class",
            labels=["outcome", "status_class"],
        )
        for labels, value in list(self.by_outcome.items()):
            fetches.add_metric(list(labels), value)
        yield fetches
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.bucket_counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]  # unannotated upstream
        yield HistogramMetricFamily(
            "fetchfleet_fetch_duration_seconds",
            "time of one fetch attempt, redirects included",
            buckets=buckets,
            sum_value=self.seconds,
        )
        yield CounterMetricFamily("fetchfleet_fetched_bytes", "response body bytes read", value=self.bytes)


class WorkerMetrics:
    """Every metric the worker exposes on /metrics, in a registry of its own (one per Runtime)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.info = Info("fetchfleet_worker", "identity of this worker process", registry=r)
        self.fetch_counts = FetchCounts()
        r.register(self.fetch_counts)
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
        self.fetch_counts.add(outcome_of(result), result.status, result.elapsed_ms / 1000.0, result.size)

    def fetched_doc(self, doc: Mapping[str, Any]) -> None:
        """One finished fetch, as the document `worker.results.result_doc` built: the hot path's call."""
        error = doc["error"]
        outcome = error["kind"] if error is not None else ("ok" if doc["ok"] else "bad_status")
        self.fetch_counts.add(outcome, doc["status"], doc["elapsed_ms"] / 1000.0, doc["size"])

    def chunk_done(self, result: str) -> None:
        self.chunks.labels(result).inc()

    def retried(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
