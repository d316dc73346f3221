"""Shared fixtures: a private redis-server, local HTTP targets, worker processes (from tests/support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.fetch_target import FetchTarget
from tests.support.http_target import HttpTarget
from tests.support.procs import WORKER, WorkerProcess, fetchfleet_env
from tests.support.redisserver import RedisProcess

pytest_plugins = ["tests.tiers"]  # an unmarked test that starts a process fails (the fast tier's guard)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """A clean database on the private server (never the machine's own Redis)."""
    with redis_server.client() as c:
        c.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def http_target() -> Iterator[HttpTarget]:
    target = HttpTarget().start()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def target() -> Iterator[FetchTarget]:
    """The misbehaving-server target of the fetcher tests, one per module: its counters (hits,
    connections, arrivals) then speak of that module's tests only."""
    t = FetchTarget().start()
    yield t
    t.stop()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(
        redis_url: str, command: tuple[str, ...] = WORKER, **settings: str | int | bool
    ) -> WorkerProcess:
        settings.setdefault("allow_private_networks", True)
        env = fetchfleet_env(redis_url, **settings)
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", command)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop()


# A fast test gets pyproject's 60 s; a test that starts processes gets this unless it names its own
# (`@pytest.mark.timeout(N)`): on a loaded 2-core CI machine, a worker start, a moto server or a SIGKILL
# take-over can pass a minute without anything being stuck.
SLOW_TEST_TIMEOUT = 180


# Under pytest-xdist (`-n`, `--dist loadfile` in pyproject.toml), the files holding the longest tests
# start first, each on its own worker, and the short ones fill in around them: started last, one of
# these alone would hold the whole run up by minutes.
# Measured seconds of a serial run (`--durations`); a name that no longer matches only loses its place.
LONGEST_FIRST = {
    "tests/test_politeness.py::test_adaptive_backoff_converges": 74,
    "tests/test_redis_full.py::test_a_full_redis_loses_nothing_and_burns_no_tries": 45,
    "tests/test_bench_smoke.py::test_bench_web_quick_prints_every_row": 35,
    "tests/test_bench_smoke.py::test_bench_quick_prints_every_row": 31,
    "tests/test_redis_problems.py::test_wrong_password_every_command": 29,
    "tests/test_politeness.py::test_stats_metrics_and_results_show_politeness": 28,
    "tests/test_memory.py::test_200k_urls_flat_rss_and_expiring_keys": 23,
    "tests/test_security.py::test_sentinel_over_tls_with_passwords": 23,
    "tests/test_redis_restart.py::test_redis_killed_and_restarted_mid_batch": 23,
    "tests/test_readme.py::test_readme_commands_work_on_a_fresh_copy_in_a_new_virtualenv": 20,
    "tests/test_poison.py::test_crashing_url_does_not_crash_loop": 19,
    "tests/test_fetcher.py::test_worker_survives_every_hostile_endpoint_in_one_batch": 18,
    "tests/test_recovery.py::test_sigkill_two_seconds_in_20000_urls": 18,
    "tests/test_pickup.py::test_an_idle_worker_sends_a_few_commands_a_second": 18,
    "tests/test_run.py::test_run_matches_a_two_worker_cluster": 17,
    "tests/test_ops_port.py::test_500_idle_connections_do_not_stop_fetching_or_health": 16,
    "tests/test_pickup.py::test_a_chunk_is_claimed_as_soon_as_it_is_queued": 16,
    "tests/test_sentinel.py::test_primary_killed_mid_batch": 15,
    "tests/test_backpressure.py::test_queue_stays_bounded": 14,
    "tests/test_redis_cut.py::test_silent_cut_logged_once_each_way": 12,
    "tests/test_recovery.py::test_living_worker_keeps_its_lease": 12,
    "tests/test_politeness.py::test_crawl_delay_spaces_requests_across_the_fleet": 12,
    "tests/test_stats.py::test_stats_shows_live_workers_queue_and_batches": 11,
    "tests/test_worker_commands.py::test_same_batch_under_both_worker_commands[arq]": 9,
    "tests/test_s3store.py::test_worker_sigkilled_mid_batch_every_reference_resolves": 9,
    "tests/test_cli_collect.py::test_waiting_collector_writes_each_result_within_100ms": 9,
    "tests/test_redis_restart.py::test_redis_down_at_start": 9,
    "tests/test_hostile.py::test_hostile_batch_beside_a_normal_one": 8,
    "tests/test_cli_ux.py::test_wait_with_no_worker_says_so_and_ctrl_c_prints_the_next_commands": 8,
    "tests/test_requeue.py::test_retries_of_a_never_answering_server_use_every_slot": 8,
    "tests/test_hostlimits.py::test_permits_of_a_killed_worker_expire": 8,
    "tests/test_lost_state.py::test_redis_restarted_empty_mid_batch": 7,
    "tests/test_warcstore.py::test_worker_sigkilled_mid_batch_loses_no_body": 7,
    "tests/test_redis_problems.py::test_readonly_replica": 7,
    "tests/test_drain.py::test_sigterm_grace_runs_out": 7,
    "tests/test_cancel.py::test_cancel_stops_every_worker": 7,
    "tests/test_readme.py::test_api_example_runs": 7,
    "tests/test_drain.py::test_sigterm_hands_back_and_fetches_nothing_twice": 7,
    "tests/test_politeness.py::test_retry_after_pauses_the_host_for_the_fleet": 7,
}


def _expected_seconds(item: pytest.Item) -> float:
    if item.get_closest_marker("slow") is None:
        return 0.0  # in-process: seconds at most
    return LONGEST_FIRST.get(item.nodeid, 1.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))
    if getattr(config, "workerinput", None) is None:
        return  # not an xdist worker: file order as written
    per_file: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        per_file[path] = per_file.get(path, 0.0) + _expected_seconds(item)
    # Stable: a file's tests stay together and in order, and every worker sorts alike (xdist checks).
    items.sort(key=lambda item: per_file[item.nodeid.split("::", 1)[0]], reverse=True)
