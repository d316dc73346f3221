"""Secrets never printed: one `redact` for URLs and free text, whatever the URL's shape."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.errors import SettingsError
from worker.redact import redact, url_password
from worker.settings import load_settings

# Passwords made of the characters a user may type into a URL, the troublesome ones included (`@`, `:`,
# `/`, `?`, `#`, quotes), and marked so that a leak of any 6 consecutive characters of one is found.
# Whitespace is left out: in free text it ends a URL, and an unencoded space makes no URL.
PASSWORD_CHARS = st.sampled_from(list("abcXYZ0129@:/?#%!$&'()*+,;=~._-[]\"\\"))
passwords = st.text(PASSWORD_CHARS, min_size=1, max_size=24).map(lambda s: f"Pw{s}Zq")
users = st.sampled_from(["", "app", "default", "u.s-er_1"])
hosts = st.sampled_from(["127.0.0.1", "redis", "redis.example.test", "[::1]", "h1:26379,h2:26380"])
ports = st.sampled_from(["", ":6379", ":1"])
tails = st.sampled_from(["", "/", "/0", "/15", "/mymaster/0", "?db=2", "/0#frag", "/path@x"])
schemes = st.sampled_from(["redis", "rediss", "redis+sentinel", "http", "https", "unix"])


def leaked(text: str, password: str) -> bool:
    """Any 6-character piece of the password (past its marker) still shows."""
    core = password.strip()
    if len(core) < 6:
        return core in text
    return any(core[i : i + 6] in text for i in range(len(core) - 5) if core[i : i + 6].strip())


@settings(max_examples=400, deadline=None)
@given(schemes, users, passwords, hosts, ports, tails)
@example("redis", "", "Pwp@ss:w/rdZq", "127.0.0.1", ":6379", "/0")
@example("redis", "user", "Pw12/34Zq", "redis", "", "/0")
@example("redis", "u", "Pwa@b@cZq", "h", ":1", "")
def test_url_password_masked_in_any_shape(
    scheme: str, user: str, password: str, host: str, port: str, tail: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{port}{tail}"
    for text in (url, f"cannot reach {url}: refused", f"got {url!r}", f"a={url}\nb=2"):
        shown = redact(text)
        assert not leaked(shown, password), (text, shown)
    assert password in (url_password(url) or "")  # what the mask covers holds the whole password


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_text_without_credentials_is_left_alone(text: str) -> None:
    if "@" not in text or "://" not in text:
        assert redact(text) == text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://***@host:6379/0"),
        ("rediss://user:s3cret@host/0", "rediss://user:***@host/0"),
        ("redis://user:p@ss@host/0", "redis://user:***@host/0"),  # the LAST "@" ends the userinfo
        ("redis://user:pa/ss@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("https://example.test/a@b", "https://example.test/a@b"),  # an "@" in a path is no password
    ],
)
def test_examples(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis//:Pw-hunter2-Zq@host:6379/0",  # no "://": not parsable as a URL at all
        "redis:/user:Pw-hunter2-Zq@host",
        "Pw-hunter2-Zq@host",
        "ftp://user:Pw-hunter2-Zq@host",
    ],
)
def test_malformed_redis_url_never_echoed(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "FETCHFLEET_REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_registered_password_masked_outside_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' password is masked wherever a message repeats it, URL or not, encoded or not."""
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", "redis://:Pw%40long-secret@127.0.0.1:1/0")
    load_settings()
    assert "long-secret" not in redact("AUTH failed for password 'Pw@long-secret'")
    monkeypatch.setenv("FETCHFLEET_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FETCHFLEET_REDIS_PASSWORD", "other-Secret-9")
    load_settings()
    assert "other-Secret-9" not in redact("server said: other-Secret-9 is wrong")
