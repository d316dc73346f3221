"""Every tunable of fetchfleet, read once from `FETCHFLEET_*` environment variables."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url

from worker.contract import headers_problem
from worker.errors import SettingsError
from worker.redact import redact, register_secret, register_url_secrets
from worker.storeuri import parse_s3, store_directory

ENV_PREFIX = "FETCHFLEET_"
URL_FIELDS = frozenset({"redis_url"})
SECRET_FIELDS = frozenset({"redis_password", "redis_sentinel_password"})


class Settings(BaseSettings):
    """One typed settings object shared by workers and producers."""

    # allow_inf_nan: "inf" passed every `gt=0` bound and crashed the worker on its first int() of it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    # Redis
    redis_url: str = "redis://localhost:6379/0"
    redis_password: SecretStr | None = None
    redis_ca_file: str | None = None
    # The sentinels' own password (their requirepass), when they have one; the data nodes' is above.
    redis_sentinel_password: SecretStr | None = None
    # Every Redis command's reply must come within this (blocking reads wait at most half of it), so a
    # silently cut connection is noticed instead of waited on for ever.
    redis_socket_timeout: float = Field(default=5.0, ge=1, le=300, description="seconds per Redis reply")
    # Start against a Redis whose maxmemory-policy evicts keys (it may drop queued work silently).
    allow_eviction: bool = False

    # Queue and batches
    queue_name: str = "fetchfleet:queue"
    chunk_size: int = Field(default=100, ge=1, le=10_000)
    # At most 100 years: Redis refuses an expiry past 2^63 ms from now, and the error named no setting.
    result_ttl: int = Field(
        default=7 * 24 * 3600, ge=60, le=3_153_600_000, description="seconds every batch key lives"
    )
    # "collected": a follower (`--wait`, `results --follow`, the API's follow) deletes the results it has
    # written out, so Redis holds only what is uncollected; "ttl": results stay until result_ttl.
    result_retention: Literal["collected", "ttl"] = "collected"
    job_timeout: int = Field(default=300, ge=1, description="seconds one chunk may run")
    max_queued_chunks: int = Field(default=10_000, ge=1, description="submit waits above this queue depth")
    poll_delay: float = Field(default=0.01, gt=0, le=5)

    # Worker
    concurrency: int = Field(default=100, ge=1, le=10_000)
    worker_id: str | None = None
    # Failure handling: a dead worker's chunks run again after the lease; SIGTERM waits drain_grace
    lease_seconds: float = Field(default=10.0, ge=2, le=600, description="claim lease, renewed every third")
    drain_grace: float = Field(default=30.0, ge=0, le=3600, description="SIGTERM: wait for fetches")
    chunk_max_tries: int = Field(default=5, ge=1, le=100, description="runs of a chunk that keeps failing")

    # Operations: metrics and health endpoint, heartbeat for `fetchfleet stats`, log format
    metrics_port: int = Field(default=0, ge=0, le=65535, description="/metrics and /healthz; 0: off")
    metrics_host: str = "127.0.0.1"
    heartbeat_interval: float = Field(default=2.0, gt=0, le=60, description="seconds between heartbeats")
    stall_seconds: float = Field(default=120.0, gt=0, description="/healthz fails after this long stuck")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _log_words(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    # Fetching
    user_agent: str = "fetchfleet/0.1 (+https://pypi.org/project/fetchfleet/)"
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    total_timeout: float = Field(default=60.0, gt=0)
    max_redirects: int = Field(default=10, ge=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    verify_tls: bool = True
    allow_private_networks: bool = False
    # Comma-separated CIDR ranges opened despite the SSRF guard, e.g. "10.1.0.0/16,fd00::/8".
    allowed_networks: Annotated[tuple[str, ...], NoDecode] = ()
    max_stored_body_bytes: int = Field(default=1024 * 1024, ge=0, description="--store-body keeps this much")
    # A JSON input line's `body`, in UTF-8 bytes: checked at submit and again by the worker.
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=0, description="request body cap")
    # Headers of the input kept on a redirect to another origin; every other one given is dropped
    # there (Authorization, Cookie and Proxy-Authorization always are), as curl does for Authorization.
    redirect_keep_headers: Annotated[tuple[str, ...], NoDecode] = ()
    # A PEM file of CAs trusted for https targets besides the system's (a private CA, a bench's).
    ca_file: str | None = None
    # Name servers the fetcher's resolver asks ("IP" or "IP:port", comma-separated); empty: the system's.
    dns_servers: Annotated[tuple[str, ...], NoDecode] = ()
    # Kept bodies go to WARC files here instead of through Redis (docs/bodies.md); unset: inline in Redis.
    body_store: str | None = None
    warc_max_bytes: int = Field(default=1024**3, ge=1024, description="rotate a WARC file past this size")
    warc_max_seconds: float = Field(default=3600.0, gt=0, description="rotate a WARC file this old")
    body_store_max_wait: float = Field(default=30.0, gt=0, description="seconds a body may wait for fsync")
    # s3:// stores: the endpoint of an S3-compatible server (unset: AWS); credentials from AWS_* variables
    s3_endpoint_url: str | None = None
    s3_flush_seconds: float = Field(default=1.0, gt=0, le=300, description="upload a WARC segment this often")

    # Retries (through the queue) and per-host politeness (through Redis, across all workers)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_statuses: Annotated[tuple[int, ...], NoDecode] = (429, 502, 503, 504)
    retry_backoff_base: float = Field(default=1.0, gt=0, description="seconds; doubles per attempt")
    retry_backoff_cap: float = Field(default=60.0, gt=0)
    retry_after_max: float = Field(default=300.0, ge=0, description="longest Retry-After honoured")
    per_host_concurrency: int = Field(default=0, ge=0, description="0: no limit")
    per_host_rate: float = Field(default=0.0, ge=0, description="requests per second per host; 0: no limit")

    @field_validator("body_store")
    @classmethod
    def _body_store(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith("s3://"):
            parse_s3(value)  # raises ValueError with the reason
            return value
        store_directory(value)  # raises ValueError with the reason
        return value

    # Politeness on the open web (docs/politeness.md): robots.txt, crawl-delay, adaptive per-host backoff
    robots: Literal["obey", "ignore"] = "obey"
    robots_allow_batch_ignore: bool = Field(default=False, description="a batch may ask to ignore robots")
    robots_cache_seconds: int = Field(default=86_400, ge=1, le=86_400, description="RFC 9309: 24 h at most")
    robots_unreachable_seconds: float = Field(default=60.0, gt=0, le=86_400, description="disallow-all time")
    crawl_delay_max: float = Field(default=30.0, ge=0, description="longest Crawl-delay honoured, seconds")
    adaptive_throttle: bool = True
    throttle_start_rate: float = Field(
        default=10.0, gt=0, description="req/s after a first 429, no limit set"
    )

    @field_validator("robots", mode="before")
    @classmethod
    def _robots_word(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if is_sentinel_url(value):
            parse_sentinel_url(value)  # a ValueError saying what is wrong, never echoing the URL
        elif not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
            )
        else:
            redis_url_problem(value)  # a ValueError saying what is wrong, never echoing the URL
        return value

    @field_validator("user_agent")
    @classmethod
    def _header_value(cls, value: str) -> str:
        # aiohttp refuses to send a header with CR, LF or NUL: every fetch would fail as invalid_url.
        problem = headers_problem({"User-Agent": value})
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        out = []
        for item in items or ():
            if item:
                try:
                    out.append(str(ipaddress.ip_network(item, strict=False)))
                except ValueError:
                    raise ValueError(f"{item!r} is not a CIDR network") from None
        return tuple(out)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value and not os.path.isfile(value):
            raise ValueError("no such file")
        if value:
            try:  # a bad file stops the command here, in one line, not the worker at its first https
                ssl.create_default_context().load_verify_locations(cafile=value)
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError("not a readable PEM file of CA certificates") from None
        return value or None

    @field_validator("dns_servers", mode="before")
    @classmethod
    def _dns_servers(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        out = []
        for item in items or ():
            problem = nameserver_problem(str(item)) if item else None
            if problem:
                raise ValueError(f"{item!r}: {problem}")
            if item:
                out.append(str(item))
        return tuple(out)

    @field_validator("redirect_keep_headers", mode="before")
    @classmethod
    def _header_names(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        return tuple(str(v).lower() for v in items or () if v)

    @field_validator("retry_statuses", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for v in value:
            if not str(v).isdigit() or not 100 <= int(v) <= 599:
                raise ValueError(f"{v!r} is not an HTTP status")
        return tuple(int(v) for v in value)

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def nameserver_problem(server: str) -> str | None:
    """Why `server` is not a name server address as c-ares takes it ("IP", "IP:port", "[IPv6]:port")."""
    host, port = server, "53"
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or "53")
    elif server.count(":") == 1:
        host, port = server.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "not an IP address (IP, IP:port or [IPv6]:port)"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "bad port"
    return None


def redis_url_problem(url: str) -> None:
    """Raise ValueError if redis-py or arq cannot read a redis://, rediss:// or unix:// URL. Both raised
    it at the first connection, as a traceback from every command; the message never repeats the URL."""
    try:
        parts = urlsplit(url)
        _port = parts.port  # a ValueError for a port that is no number or out of range
    except ValueError:
        raise ValueError(
            "is not a URL (a [IPv6] host not closed, or a port that is not a number up to 65535)"
        ) from None
    if parts.scheme != "unix" and not re.fullmatch(r"/?[0-9]*", parts.path):
        raise ValueError("the database after the host is not a number (redis://host:6379/0)")
    for name, values in parse_qs(parts.query).items():
        if name == "db" and not values[-1].isdigit():
            raise ValueError("the db= option is not a number")
    try:  # redis-py's reading of the other options (socket_timeout= ...)
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except ValueError as exc:
        raise ValueError(redact(str(exc))) from None


SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_TLS_SCHEME = "rediss+sentinel://"  # TLS to the sentinels and to the data nodes
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.startswith((SENTINEL_SCHEME, SENTINEL_TLS_SCHEME))


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, service name, db and credentials of a `redis+sentinel://` URL (ValueError if it
    is not one; the message never repeats the URL, which may hold a password)."""
    tls = url.startswith(SENTINEL_TLS_SCHEME)
    rest = url[len(SENTINEL_TLS_SCHEME if tls else SENTINEL_SCHEME) :]
    userinfo, at, rest = rest.rpartition("@") if "@" in rest else ("", "", rest)
    hosts, _, path = rest.partition("/")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    sentinels = []
    for item in hosts.split(","):
        host, port = item.strip(), str(SENTINEL_PORT)
        if host.startswith("["):  # [::1]:26379
            host, _, tail = host[1:].partition("]")
            port = tail.removeprefix(":") or port
        elif ":" in host:
            host, _, port = host.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                "a sentinel address is not host:port (redis+sentinel://h:26379,h2:26379/service/0)"
            )
        sentinels.append((host, int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("names no service (redis+sentinel://h:26379,h2:26379/service/0)")
    if db and not db.isdigit():
        raise ValueError("database is not a number (redis+sentinel://h:26379/service/0)")
    return SentinelTarget(tuple(sentinels), service, int(db or 0), username, password, tls)


# Which process reads each setting; docs/settings.md's table shows it (tests/test_readme.py checks).
PRODUCER_FIELDS = frozenset({"chunk_size", "max_queued_chunks", "result_retention"})
SHARED_FIELDS = frozenset(
    {
        "redis_url", "redis_password", "redis_ca_file", "redis_sentinel_password", "queue_name", "result_ttl",
        "max_request_body_bytes",
        "s3_endpoint_url", "redis_socket_timeout", "allow_eviction",
    }
)  # fmt: skip
# Worker-only settings that decide how URLs are fetched: set beside `submit` they look as if they should
# apply to its batch, and do not, so `submit` warns about them.
FETCH_POLICY_FIELDS = frozenset(
    {
        "concurrency", "user_agent", "connect_timeout", "read_timeout", "total_timeout", "max_redirects",
        "max_body_bytes", "verify_tls", "allow_private_networks", "allowed_networks",
        "max_stored_body_bytes", "max_attempts", "retry_statuses", "per_host_concurrency", "per_host_rate",
        "ca_file", "dns_servers",
    }
)  # fmt: skip


def read_by(field: str) -> Literal["worker", "producer", "both"]:
    """Which process reads the setting `field`: a worker, a producer (submit, results, run's client)."""
    if field in SHARED_FIELDS:
        return "both"
    return "producer" if field in PRODUCER_FIELDS else "worker"


def worker_only_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Fetch-policy FETCHFLEET_* variables set in `environ`: only workers read them."""
    env = os.environ if environ is None else environ
    return sorted(env_name(f) for f in FETCH_POLICY_FIELDS if env_name(f) in env)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def environment(base: Mapping[str, str], **values: object) -> dict[str, str]:
    """`base` without its FETCHFLEET_* variables, plus `values` as settings: for a child process."""
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    for field, value in values.items():
        env[env_name(field)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """FETCHFLEET_* variables that name no setting: a misspelt one would otherwise be silently ignored."""
    known = {env_name(name) for name in Settings.model_fields}
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def _unknown_message(names: list[str]) -> str:
    known = sorted(env_name(name) for name in Settings.model_fields)
    lines = []
    for name in names:
        close = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name}: not a fetchfleet setting{hint}")
    return "unknown settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value or an unknown FETCHFLEET_* name raises SettingsError naming it."""
    unknown = unknown_variables()
    if unknown:
        raise SettingsError(_unknown_message(unknown))
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {_shown(field, given)})"
            lines.append(f"{env_name(field)}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    # From here on every log line and message masks the Redis password wherever it appears.
    for secret in (settings.redis_password, settings.redis_sentinel_password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    register_url_secrets(settings.redis_url)
    return settings


def _shown(field: str, given: object) -> str:
    """A rejected value as a settings error may echo it: never a credential, even of a malformed URL."""
    if field in SECRET_FIELDS:
        return "a value that is not shown"
    text = repr(given)
    if field in URL_FIELDS and "@" in text:
        # A malformed URL (no "://", say) cannot be parsed for its password: show none of it.
        return "a value with credentials, not shown"
    return redact(text)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
