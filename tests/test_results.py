"""The hot path's result documents: plain dicts encoded with orjson must be FetchResult documents."""

from __future__ import annotations

import orjson
import pytest

from worker import errors
from worker.contract import ErrorKind, FetchResult
from worker.fetcher import FetchOutcome
from worker.results import build_result, encode, encode_doc, error_result, result_doc

OUTCOMES = {
    "ok": FetchOutcome("http://a.test/x", "http://a.test/x", 200, 1024, "ab" * 32, "text/html", 0, 1.25),
    "redirected 404": FetchOutcome("http://a.test/", "https://b.test/é", 404, 0, "00" * 32, None, 2, 30.0),
    "timeout": FetchOutcome(
        "http://a.test/", None, None, 10, None, None, 0, 60000.5, error=errors.FetchTimeout("slow")
    ),
    "too large": FetchOutcome(
        "http://a.test/", None, 200, 9, None, None, 0, 0.001, error=errors.TooLarge("x" * 900)
    ),
    "unicode": FetchOutcome("http://ü.test/ö", None, 200, 0, None, 'text/plain; name="ü"', 0, 1e-05),
}


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_encoded_doc_is_exactly_what_the_contract_writes(name: str) -> None:
    outcome = OUTCOMES[name]
    payload = encode_doc(result_doc(7, outcome, 2, "w-1"))
    model = build_result(7, outcome, 2, "w-1")
    assert FetchResult.model_validate_json(payload) == model
    assert orjson.loads(payload) == orjson.loads(encode(model))
    assert list(orjson.loads(payload)) == list(orjson.loads(encode(model)))  # same fields, same order


def test_error_kind_outside_the_contract_is_refused() -> None:
    class Odd(errors.FetchError):
        kind = "not-a-kind"

    outcome = FetchOutcome("http://a.test/", None, None, 0, None, None, 0, 1.0, error=Odd("?"))
    with pytest.raises(ValueError):
        result_doc(0, outcome, 1, "w")


def test_header_bytes_that_are_not_utf8_still_make_a_result() -> None:
    """aiohttp decodes header bytes with surrogateescape; the result shows them as U+FFFD, never fails."""
    outcome = FetchOutcome("http://a.test/", "http://a.test/", 200, 0, None, "text/\udcff\ud800", 0, 1.0)
    doc = result_doc(0, outcome, 1, "w")
    encoded = encode_doc(doc)
    result = FetchResult.model_validate_json(encoded)
    assert result.content_type is not None and result.content_type.startswith("text/\ufffd")
    assert result.status == 200 and result.url == "http://a.test/"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:hunter2@example.com/x", "http://user:***@example.com/x"),
        ("http://user:p@ss@word@example.com/x?a=b@c", "http://user:***@example.com/x?a=b@c"),
        ("https://:hunter2@example.com", "https://:***@example.com"),
        ("http://user@example.com/a@b", "http://user@example.com/a@b"),  # no password, nothing to mask
        ("http://example.com/?u=a:b@c", "http://example.com/?u=a:b@c"),  # not userinfo
    ],
)
def test_passwords_in_result_urls_are_masked(url: str, shown: str) -> None:
    outcome = FetchOutcome(url, url + "#end", 200, 0, None, None, 0, 1.0)
    doc = orjson.loads(encode_doc(result_doc(0, outcome, 1, "w")))
    assert doc["url"] == shown and doc["final_url"] == shown + "#end"
    model = build_result(0, outcome, 1, "w")
    assert (model.url, model.final_url) == (shown, shown + "#end")
    assert error_result(0, url, ErrorKind.DNS, "m", 1, "w").url == shown


def test_passwords_in_error_messages_are_masked() -> None:
    message = "more than 10 redirects (last to http://u:p@ss@w0rd@example.com/x), see https://a:b@c.test"
    outcome = FetchOutcome(
        "http://e.test/", None, None, 0, None, None, 10, 1.0, error=errors.TooManyRedirects(message)
    )
    for doc in (
        orjson.loads(encode_doc(result_doc(0, outcome, 1, "w"))),
        build_result(0, outcome, 1, "w").model_dump(),
    ):
        shown = doc["error"]["message"]
        assert "p@ss" not in shown and "w0rd" not in shown and ":b@" not in shown, shown
        assert "http://u:***@example.com/x" in shown and "https://a:***@c.test" in shown
    assert "w0rd" not in error_result(0, "http://e.test/", ErrorKind.DNS, message, 1, "w").error.message  # type: ignore[union-attr]
