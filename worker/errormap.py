"""The one place aiohttp's and the socket layer's exceptions become fetchfleet's FetchError kinds."""

from __future__ import annotations

import asyncio
import os
import ssl

import aiohttp
from aiohttp import http_exceptions

from worker import errors
from worker.ssrf import BlockedAddress


def _connector_cause(exc: aiohttp.ClientConnectorError) -> BaseException | None:
    cause: BaseException | None = exc.os_error
    while cause is not None:
        if isinstance(cause, BlockedAddress):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _mentions_blocked(exc: BaseException) -> bool:
    # aiohappyeyeballs folds several connect failures into one OSError with their messages joined.
    return "is not allowed (private, loopback" in str(exc)


def _connect_message(exc: aiohttp.ClientConnectorError) -> str:
    """`cannot connect to HOST:PORT: Connection refused`: aiohttp's own text names its TLS context
    (`ssl:default`) even for a plain http:// URL, which sends users looking for a TLS problem."""
    os_error = exc.os_error
    reason = os.strerror(os_error.errno) if os_error.errno else (str(os_error) or type(os_error).__name__)
    return f"cannot connect to {exc.host}:{exc.port}: {reason}"


def map_exception(exc: BaseException) -> errors.FetchError:
    """Most specific first; the returned error's `kind` is what the result reports."""
    if isinstance(exc, errors.FetchError):
        return exc
    message = str(exc) or exc.__class__.__name__
    mapped = _while_connecting(exc, message)
    return mapped if mapped is not None else _after_connecting(exc, message)


def _while_connecting(exc: BaseException, message: str) -> errors.FetchError | None:
    """Name resolution, TLS, the connection and timeouts; None for anything else."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return errors.DNSFailed(f"DNS lookup failed: {exc.os_error}")
    if isinstance(
        exc,
        aiohttp.ClientConnectorCertificateError
        | aiohttp.ClientSSLError
        | aiohttp.ServerFingerprintMismatch
        | ssl.SSLError,
    ):
        return errors.TLSFailed(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if _connector_cause(exc) is not None or _mentions_blocked(exc):
            return errors.Blocked(str(exc.os_error))
        return errors.ConnectFailed(_connect_message(exc))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return errors.FetchTimeout(f"connect timed out: {message}")
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return errors.FetchTimeout(message if message != "TimeoutError" else "timed out")
    return None


def _after_connecting(exc: BaseException, message: str) -> errors.FetchError:
    """Redirects, bad URLs, broken responses, and the rest (InternalFailed)."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return errors.TooManyRedirects(message)
    if isinstance(exc, UnicodeError):  # a host name IDNA cannot encode (xn--, empty labels)
        return errors.InvalidURL(f"host name cannot be encoded: {message}")
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return errors.InvalidURL(message)
    if isinstance(exc, aiohttp.ClientPayloadError | http_exceptions.HttpProcessingError):
        return errors.ProtocolFailed(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return errors.ProtocolFailed(f"server disconnected: {message}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return errors.ProtocolFailed(message)
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return errors.ConnectFailed(message)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return errors.ProtocolFailed(message)
    return errors.InternalFailed(f"{exc.__class__.__name__}: {message}")
