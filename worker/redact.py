"""One way to hide secrets in anything fetchfleet prints: URLs, free text, exception text.

Every log line, CLI message and settings error goes through `redact`. A password may hold `@`, `:`,
`/` or `?` unencoded (a malformed URL, but one a user can type): the userinfo is taken up to the LAST
`@` of the URL, so no part of such a password is ever shown. When in doubt the mask takes more, never
less: an over-masked URL in a log costs nothing, a leaked password costs a rotation.
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote, urlsplit

MASK = "***"

# A URL starts at a scheme; it runs to the next whitespace (quotes belong to it: a password may hold one).
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S*")

# Literal secrets known to this process (the Redis password from the settings, decoded and encoded):
# masked wherever they appear, even outside a URL, e.g. quoted back by a library's error message.
_SECRETS: set[str] = set()
MIN_SECRET_LEN = 4  # shorter ones would mask unrelated text; the URL rule still hides them in URLs


def register_secret(secret: str | None) -> None:
    """Mask `secret` (and its percent-decoded form) in every later `redact` call."""
    if not secret:
        return
    for form in (secret, unquote(secret)):
        if len(form) >= MIN_SECRET_LEN:
            _SECRETS.add(form)


def register_url_secrets(url: str) -> None:
    """Mask the password of `url` wherever it appears later, as this module and as urllib read it."""
    register_secret(url_password(url))
    with contextlib.suppress(ValueError):  # a malformed URL: the first reading covers it
        register_secret(urlsplit(url).password)


def url_password(url: str) -> str | None:
    """The password part of a URL's userinfo, by the same last-`@` rule `redact` masks with."""
    userinfo = _userinfo(url)
    if userinfo is None:
        return None
    _user, sep, password = userinfo.partition(":")
    return password if sep else None


def _userinfo(url: str) -> str | None:
    """The userinfo of `url`, read so that a password with `@`, `:` or `/` in it is taken whole."""
    _scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    # The usual authority: up to the first "/", "?" or "#". Its LAST "@" ends the userinfo (an unencoded
    # "@" in a password comes before it)...
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    after = rest[len(authority) :]
    # ...unless an "@" follows the cut too, after an authority with a ":" or "@" in it: then a password
    # holding "/", "?" or "#" may have cut the authority short (`user:pa/ss@host`), or a path or query
    # holds an "@" (`host:8080/?to=a@b`). The two cannot be told apart; the mask takes the larger reading.
    if "@" in after and (":" in authority or "@" in authority):
        return rest.rpartition("@")[0]
    if "@" in authority:
        return authority.rpartition("@")[0]
    return None  # host/path@...: an "@" in the path, no password before it


def _mask_url(url: str) -> str:
    userinfo = _userinfo(url)
    if userinfo is None:
        return url
    scheme, _sep, rest = url.partition("://")
    user, colon, _password = userinfo.partition(":")
    # Keep the user name only when it is clearly one: before a ":" and with no "@" (else it may be part
    # of a password, or a token used as the user name).
    shown = f"{user}:{MASK}" if colon and user and "@" not in user else MASK
    return f"{scheme}://{shown}@{rest[len(userinfo) + 1 :]}"


def redact(text: str) -> str:
    """`text` (a URL or any message) with every URL password and every registered secret masked."""
    if not isinstance(text, str):
        text = str(text)
    if "://" in text and "@" in text:
        text = _URL.sub(lambda m: _mask_url(m.group(0)), text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
