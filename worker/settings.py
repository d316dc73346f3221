"""Every tunable of fetchfleet, read once from `FETCHFLEET_*` environment variables."""

from __future__ import annotations

import os
import socket
from functools import lru_cache

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import SettingsError

ENV_PREFIX = "FETCHFLEET_"


class Settings(BaseSettings):
    """One typed settings object shared by workers and producers."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Redis
    redis_url: str = "redis://localhost:6379/0"
    redis_password: SecretStr | None = None
    redis_ca_file: str | None = None

    # Queue and batches
    queue_name: str = "fetchfleet:queue"
    chunk_size: int = Field(default=100, ge=1, le=10_000)
    result_ttl: int = Field(default=7 * 24 * 3600, ge=60, description="seconds every batch key lives")
    job_timeout: int = Field(default=300, ge=1, description="seconds one chunk may run")
    max_queued_chunks: int = Field(default=10_000, ge=1, description="submit waits above this queue depth")
    poll_delay: float = Field(default=0.01, gt=0, le=5)

    # Worker
    concurrency: int = Field(default=100, ge=1, le=10_000)
    worker_id: str | None = None

    # Fetching
    user_agent: str = "fetchfleet/0.1 (+https://pypi.org/project/fetchfleet/)"
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    total_timeout: float = Field(default=60.0, gt=0)
    max_redirects: int = Field(default=10, ge=0)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    verify_tls: bool = True
    allow_private_networks: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value raises SettingsError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{env_name(field)}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
