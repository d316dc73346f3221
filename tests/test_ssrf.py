"""The SSRF guard: refused before anything is sent, at every redirect hop, in every notation."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.support.fetch_target import FetchTarget
from tests.support.procs import fetchfleet_env, run_cli, run_cli_in_process
from worker.fetcher import Fetcher
from worker.settings import load_settings
from worker.ssrf import AddressPolicy, parse_host_ip

# Every socket.connect this process attempts, recorded by an audit hook (hooks cannot be removed,
# so it only records while a test switches it on).
_CONNECTS: list[object] = []
_RECORDING = [False]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect" and _RECORDING[0]:
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def counting() -> Iterator[FetchTarget]:
    """A server on 127.0.0.1 and [::1] that counts every connection it accepts."""
    t = FetchTarget(ipv6=True).start()
    yield t
    t.stop()


def blocked_urls(t: FetchTarget) -> list[str]:
    p, p6 = t.port, t.port6
    return [
        f"http://127.0.0.1:{p}/ok/1",
        f"http://localhost:{p}/ok/1",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{p6}/ok/1",
        "http://10.0.0.1/",
        f"http://0x7f000001:{p}/ok/1",
        f"http://2130706433:{p}/ok/1",
        f"http://127.1:{p}/ok/1",
        f"http://0177.0.0.1:{p}/ok/1",
        f"http://[::ffff:127.0.0.1]:{p}/ok/1",
        "http://[fe80::1]/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
    ]


# The notations aiohttp itself can connect to (it refuses 127.1 and friends as non-canonical).
FETCHABLE_LOOPBACK = ("//127.0.0.1:", "//[::1]:", "//[::ffff:127.0.0.1]:", "//localhost:")


@pytest.mark.parametrize(
    "host, expected",
    [
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("example.com", None),
        ("deadbeef.example", None),
    ],
)
def test_odd_notations_are_read_as_addresses(host: str, expected: str | None) -> None:
    ip = parse_host_ip(host)
    assert (str(ip) if ip else None) == expected


FORBIDDEN = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.251", "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "64:ff9b::a00:1",
    "2002:7f00:1::1", "2002:a00:1::1", "2001:db8::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]  # fmt: skip
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("addr", FORBIDDEN)
def test_default_policy_refuses(addr: str) -> None:
    assert not AddressPolicy().is_allowed(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ALLOWED)
def test_default_policy_allows_public(addr: str) -> None:
    assert AddressPolicy().is_allowed(ipaddress.ip_address(addr))


def test_allowed_networks_open_only_their_ranges() -> None:
    policy = AddressPolicy.from_settings(False, ["127.0.0.2/32", "fd00::/8"])
    assert policy.is_allowed(ipaddress.ip_address("127.0.0.2"))
    assert policy.is_allowed(ipaddress.ip_address("fd00::5"))
    assert not policy.is_allowed(ipaddress.ip_address("127.0.0.1"))
    assert not policy.is_allowed(ipaddress.ip_address("10.0.0.1"))
    assert AddressPolicy.from_settings(True).is_allowed(ipaddress.ip_address("10.0.0.1"))


async def test_default_settings_block_before_connecting(counting: FetchTarget) -> None:
    counting.reset_counts()
    f = Fetcher(load_settings(allow_private_networks=False, allowed_networks=""))
    await f.start()
    _CONNECTS.clear()
    _RECORDING[0] = True
    try:
        outcomes = [(u, await f.fetch(u)) for u in blocked_urls(counting)]
    finally:
        _RECORDING[0] = False
        await f.close()
    for url, o in outcomes:
        assert o.status is None, url
        assert o.error is not None and o.error.kind == "blocked", (url, o.error)
        assert o.elapsed_ms < 200, (url, o.elapsed_ms)
    # Nothing reached the counting server, and no socket even tried to connect anywhere.
    assert counting.connections == 0
    assert _CONNECTS == []


async def test_the_counter_sees_connections_when_allowed(counting: FetchTarget) -> None:
    # Control for the test above: the same loopback URLs do connect once the guard is opened.
    counting.reset_counts()
    f = Fetcher(load_settings(allow_private_networks=True))
    await f.start()
    try:
        loopback = [u for u in blocked_urls(counting) if any(s in u for s in FETCHABLE_LOOPBACK)]
        outcomes = [await f.fetch(u) for u in loopback]
    finally:
        await f.close()
    assert all(o.status == 200 for o in outcomes), [o.error for o in outcomes]
    assert len(outcomes) == 4
    assert counting.connections >= 2  # at least one connection per address family


@pytest.fixture(scope="module")
def allowed_target() -> Iterator[FetchTarget]:
    """The "public" server of the redirect tests: on 127.0.0.2, opened by FETCHFLEET_ALLOWED_NETWORKS."""
    t = FetchTarget(host="127.0.0.2").start()
    yield t
    t.stop()


async def test_redirect_to_a_forbidden_address_is_blocked_at_the_hop(
    allowed_target: FetchTarget, counting: FetchTarget
) -> None:
    counting.reset_counts()
    f = Fetcher(load_settings(allow_private_networks=False, allowed_networks="127.0.0.2/32"))
    await f.start()
    try:
        direct = await f.fetch(allowed_target.url("/ok/3"))
        hops = [
            f"http://127.0.0.1:{counting.port}/ok/1",  # literal: refused before connecting
            f"http://localhost:{counting.port}/ok/1",  # a name resolving inside: refused at connect
            f"http://[::1]:{counting.port6}/ok/1",
            "http://169.254.169.254/latest/meta-data/",
        ]
        outcomes = [await f.fetch(allowed_target.url(f"/redirect-to?url={u}")) for u in hops]
    finally:
        await f.close()
    assert direct.status == 200
    for o in outcomes:
        assert o.error is not None and o.error.kind == "blocked", o.error
        assert o.status is None and o.redirects == 1
    assert counting.connections == 0


@pytest.mark.slow
def test_worker_with_default_settings_blocks_every_private_target(
    redis_url: str, spawn_worker, counting: FetchTarget, tmp_path: Path
) -> None:
    """Through a real worker process and the CLI, with the default (guarded) settings."""
    counting.reset_counts()
    urls = blocked_urls(counting)
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    spawn_worker(redis_url, allow_private_networks=False)
    out = tmp_path / "out.jsonl"
    env = fetchfleet_env(redis_url)
    started = time.monotonic()
    proc = run_cli(["submit", str(path), "--wait", "-o", str(out)], env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == len(urls)
    for r in results:
        assert r["status"] is None and r["ok"] is False, r
        assert r["error"]["kind"] == "blocked", r
        assert r["attempts"] == 1  # blocked is final, never retried
    assert counting.connections == 0
    assert time.monotonic() - started < 30
    with Redis.from_url(redis_url) as r:
        assert r.zcard("fetchfleet:queue") == 0  # no retry waiting either


def test_bad_allowed_networks_is_named(
    monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    env = fetchfleet_env("redis://127.0.0.1:1/0", allowed_networks="10.0.0.0/33")
    proc = run_cli_in_process(["status", "nope"], env, monkeypatch, capfdbinary)
    assert proc.returncode == 2
    assert b"FETCHFLEET_ALLOWED_NETWORKS" in proc.stderr and b"Traceback" not in proc.stderr


def test_the_audit_hook_sees_connects() -> None:
    # Control for the "no socket tried to connect" assertion: the hook does see a real connect.

    s = socket.socket()
    _CONNECTS.clear()
    _RECORDING[0] = True
    try:
        s.connect_ex(("127.0.0.1", 9))
    finally:
        _RECORDING[0] = False
        s.close()
    assert _CONNECTS == [("127.0.0.1", 9)]
