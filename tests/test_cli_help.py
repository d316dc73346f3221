"""Every subcommand's --help shows an example; the exit codes are the documented ones (0, 1, 2, 130)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.cli import EXAMPLES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main
from tests.support.procs import ROOT, fetchfleet_env, restore_sigint, run_cli, run_cli_in_process, start_cli
from tests.support.redisserver import free_port


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_exit_codes_are_the_documented_ones() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_the_commands_this_issue_needs_exist() -> None:
    assert {"submit", "results", "status", "cancel", "worker", "run"} <= set(subcommands())


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_of_every_subcommand_has_an_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert name in EXAMPLES, f"add an example for `fetchfleet {name}` to EXAMPLES in producer/cli.py"
    assert main([name, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    example = out[out.index("example:") :]
    assert f"fetchfleet {name}" in example, out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in subcommands():
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["run"],
        ["run", "urls.txt", "--workers", "0"],
        ["run", "urls.txt", "--format", "xml"],
        ["submit", "urls.txt", "--no-such-option"],
        ["status"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "submit"])
def test_missing_input_file_exits_2(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    missing = tmp_path / "nope.txt"
    env = fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0")
    proc = run_cli_in_process([command, str(missing)], env, monkeypatch, capfdbinary)
    assert proc.returncode == EXIT_USAGE
    assert f"{missing}: no such file" in proc.stderr.decode()


def test_a_bad_setting_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://example.com/\n")
    env = fetchfleet_env("redis://127.0.0.1:1/0", concurrency="lots")
    proc = run_cli_in_process(["run", str(urls)], env, monkeypatch, capfdbinary)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE
    assert "FETCHFLEET_CONCURRENCY" in err and "Traceback" not in err


def test_unreachable_redis_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://example.com/\n")
    env = fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0")
    for argv in (["submit", str(urls)], ["status", "0123456789abcdef"]):
        proc = run_cli_in_process(argv, env, monkeypatch, capfdbinary)
        err = proc.stderr.decode()
        assert proc.returncode == EXIT_FAILED, (argv, err)
        assert "Redis" in err and "Traceback" not in err


def test_unknown_batch_exits_1(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    proc = run_cli_in_process(
        ["status", "0123456789abcdef"], fetchfleet_env(redis_url), monkeypatch, capfdbinary
    )
    assert proc.returncode == EXIT_FAILED
    assert "no batch" in proc.stderr.decode()


@pytest.mark.slow
def test_done_exits_0_even_with_failed_fetches(redis_url: str, spawn_worker) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nothing"
    spawn_worker(redis_url)
    env = fetchfleet_env(redis_url, allow_private_networks=True)
    proc = run_cli(["submit", "-", "--wait", "-q"], env, stdin=(dead + "\n").encode())
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    assert b'"kind":"connect"' in proc.stdout


@pytest.mark.slow
def test_ctrl_c_while_waiting_exits_130(redis_url: str, tmp_path: Path) -> None:
    """No worker runs, so `submit --wait` waits until the terminal's Ctrl-C reaches its process group."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://example.com/\n")
    env = fetchfleet_env(redis_url)
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = start_cli(
            ["submit", str(urls), "--wait", "-o", str(tmp_path / "o")],
            env,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            preexec_fn=restore_sigint,  # the Ctrl-C below must reach it however pytest was started
        )
    try:
        batch_id = proc.stdout.readline()  # printed once the batch is queued: now it waits
        assert batch_id.strip(), err_path.read_text()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == EXIT_INTERRUPTED
        assert "Traceback" not in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.mark.slow
def test_python_m_worker_help_starts_no_worker() -> None:
    """`python -m worker --help` prints a usage line and exits; it once started a worker against the
    default Redis. A stray argument is a usage error (2)."""
    env = fetchfleet_env(f"redis://127.0.0.1:{free_port()}/0")  # nothing there, should it ever start
    helped = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert helped.returncode == 0 and b"fetchfleet worker --help" in helped.stdout, helped
    stray = subprocess.run(
        [sys.executable, "-m", "worker", "x"], env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert stray.returncode == 2 and b"takes no arguments" in stray.stderr, stray
