"""Reading submission files (producer/inputs.py): the second pass trusts the first, yet never renumbers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from producer import inputs
from producer.inputs import entries, scan
from producer.submitting import checked_requests
from worker.contract import ChunkJob, FetchRequest, RejectedRequest

INPUT = (
    b"\xef\xbb\xbfhttp://example.com/first\n"
    b"\n"
    b"# a comment\n"
    b"  https://example.com/padded  \n"
    b'{"url": "http://example.com/get"}\n'
    b'{"url": "http://example.com/post", "method": "POST", "body": "x"}\n'
    b"http://example.com/last"
)


def checked(path: Path) -> str:
    report = scan(path, "in", pytest.fail, max_body_bytes=1000)
    return report.digest


def test_entries_are_what_scan_passed_in_order(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(INPUT)
    got = list(entries(path, checked(path), lambda: pytest.fail("unchanged")))
    assert got == [
        "http://example.com/first",
        "https://example.com/padded",
        "http://example.com/get",
        FetchRequest(url="http://example.com/post", method="POST", body="x"),
        "http://example.com/last",
    ]
    assert scan(path, "in", pytest.fail, 1000).count == len(got)


def test_the_second_pass_does_not_check_bare_urls_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scan` checked them and a worker checks them again: a third check per URL is the producer's CPU."""
    path = tmp_path / "in.txt"
    path.write_text("".join(f"http://example.com/{i}\n" for i in range(100)))
    digest = checked(path)
    calls = 0
    real = inputs.url_problem

    def counting(url: str) -> str | None:
        nonlocal calls
        calls += 1
        return real(url)

    monkeypatch.setattr(inputs, "url_problem", counting)
    assert len(list(entries(path, digest))) == 100
    assert calls == 0


def test_a_file_changed_after_the_check_keeps_every_index(tmp_path: Path) -> None:
    """A line that no longer reads is sent as a RejectedRequest at its place, never dropped: the lines
    after it keep their indexes, and the caller hears that the file changed."""
    path = tmp_path / "in.txt"
    lines = [
        b"http://example.com/0",
        b"http://example.com/1",
        b'{"url": "http://example.com/2", "headers": {"Authorization": "Bearer s3cret"}}',
        b"http://example.com/3",
        b"http://example.com/4",
        b"http://example.com/5",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    digest = checked(path)
    lines[1] = b"not a url at all"
    lines[2] = b'{"url": "http://u:pw@example.com/2", "headers": {"Authorization": "Bearer s3cret"}, "x": 1}'
    lines[3] = b"http://example.com/\xff"
    lines[4] = b"http://example.com/" + b"a" * 9000
    path.write_bytes(b"\n".join(lines) + b"\n")
    told: list[str] = []
    got = list(entries(path, digest, lambda: told.append("changed")))
    assert told == ["changed"]
    assert len(got) == 6 and got[0] == "http://example.com/0" and got[5] == "http://example.com/5"
    assert got[1] == "not a url at all"  # a bare line goes as it is: the worker's url_problem rejects it
    rejected = got[2:5]
    assert all(isinstance(r, RejectedRequest) for r in rejected), rejected
    assert "changed after" in rejected[0].reason and "s3cret" not in repr(rejected[0])
    assert rejected[0].url == "http://u:***@example.com/2"
    assert "UTF-8" in rejected[1].reason
    assert len(rejected[2].url) <= 8192 and "too long" in rejected[2].reason


def test_an_unchanged_file_is_not_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(INPUT)
    digest = checked(path)
    assert len(list(checked_requests(path, "in.txt", digest))) == 5
    assert capsys.readouterr().err == ""
    path.write_bytes(INPUT + b"\nhttp://example.com/added\n")
    assert len(list(checked_requests(path, "in.txt", digest))) == 6
    assert "in.txt: the file changed after it was checked" in capsys.readouterr().err


def test_a_rejected_request_keeps_its_reason_through_a_chunk_job() -> None:
    """As the producer queues it (chunk_payload: defaults left out) and a worker reads it back."""
    rejected = RejectedRequest.of({"url": "http://u:pw@example.com/"}, "not valid UTF-8 (changed)")
    job = ChunkJob(batch_id="b", requests=["http://example.com/", rejected])
    again = ChunkJob.model_validate(
        orjson.loads(orjson.dumps(job.model_dump(mode="json", exclude_defaults=True)))
    )
    assert again.requests == ["http://example.com/", rejected]
    planted = ChunkJob.model_validate(
        {"batch_id": "b", "requests": [{"url": "http://a:b@x/", "reason": "r" * 900}]}
    )
    (only,) = planted.requests
    assert isinstance(only, RejectedRequest) and only.url == "http://a:***@x/" and len(only.reason) == 500
