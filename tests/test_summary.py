"""The end-of-run summary (producer/summary.py): what `add` counts from each result document."""

from __future__ import annotations

from typing import Any

from producer.summary import Summary, outcome_of

DOCS: list[dict[str, Any]] = [
    {"url": "http://a/1", "ok": True, "status": 200},
    {"url": "http://a/2", "ok": True, "status": 200, "body_truncated": True},
    {"url": "http://u:pw@a/3", "ok": False, "status": 404},
    {"url": "http://a/4", "ok": False, "status": 503},
    {"url": "http://a/5", "ok": False, "status": None, "error": {"kind": "dns", "message": "x"}},
    {"url": "http://a/6", "ok": False, "error": {"message": "no kind"}},
    {"url": "http://a/7", "ok": False, "status": None, "error": None},
    {"url": "http://a/8"},
    {"url": "http://a/9", "ok": True, "error": {"kind": "internal", "message": "ok yet an error"}},
    {"url": "http://u:pw@a/10", "ok": False, "status": 404},
    {"ok": False, "status": 500},
]


def test_add_counts_each_document_by_its_outcome() -> None:
    summary = Summary()
    for doc in DOCS:
        summary.add(doc)
    expected: dict[str, int] = {}
    for doc in DOCS:
        expected[outcome_of(doc)] = expected.get(outcome_of(doc), 0) + 1
    assert summary.counts == expected
    assert summary.counts == {"ok": 2, "HTTP 4xx": 2, "HTTP 5xx": 2, "dns": 1, "internal": 4}
    assert (summary.done, summary.failed, summary.errors, summary.truncated) == (11, 8, 3, 1)
    # The first document of each outcome is its example, its password masked.
    assert summary.examples == {
        "ok": "http://a/1",
        "HTTP 4xx": "http://u:***@a/3",
        "HTTP 5xx": "http://a/4",
        "dns": "http://a/5",
        "internal": "http://a/6",
    }
    assert summary.should_fail("any") and summary.should_fail("error-kinds")


def test_failed_never_passes_done() -> None:
    summary = Summary()
    for doc in DOCS * 3:
        summary.add(doc)
        assert 0 <= summary.failed <= summary.done
