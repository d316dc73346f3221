"""One way to hide secrets in anything fetchfleet prints: URLs, free text, exception text.

Every log line, CLI message and settings error goes through `redact`. A password may hold `@`, `:`,
`/` or `?` unencoded (a malformed URL, but one a user can type): the userinfo is taken up to the LAST
`@` of the URL, so no part of such a password is ever shown. When in doubt the mask takes more, never
less: an over-masked URL in a log costs nothing, a leaked password costs a rotation.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

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
    # The usual authority: up to the first "/", "?" or "#". If it has an "@", its LAST "@" ends the
    # userinfo (an unencoded "@" in a password comes before it).
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        return authority.rpartition("@")[0]
    # No "@" there, yet one later: a password holding "/", "?" or "#" may have cut the authority short.
    # With a ":" before the cut it may be `user:pa` of `user:pa/ss@host`, or `host:8080` of a path
    # holding an "@": the two cannot be told apart, so the mask takes the larger reading.
    if ":" not in authority:
        return None  # host/path@...: an "@" in the path, no password before it
    return rest.rpartition("@")[0]


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
