"""The end-of-run summary: results counted by outcome, one example URL each, and what to do about them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from worker.redisconn import redact

FAIL_ON = ("never", "error-kinds", "any")

# Outcomes with a known cause and the settings that change it. Every one of these is read by the WORKERS
# (worker/settings.py WORKER_SETTINGS): setting it beside `submit` does nothing.
HINTS: dict[str, str] = {
    "blocked": (
        "workers refuse loopback, private, link-local and reserved addresses. To fetch them, set "
        "FETCHFLEET_ALLOW_PRIVATE_NETWORKS=true, or FETCHFLEET_ALLOWED_NETWORKS=CIDR[,CIDR...] for just "
        "those ranges, in the environment of the WORKERS (for `fetchfleet run`: this shell)"
    ),
    "dns": (
        "the host names did not resolve from the workers: check their spelling, and the DNS the WORKERS "
        "use (a container's /etc/resolv.conf)"
    ),
    "tls": (
        "certificate or handshake failures: FETCHFLEET_VERIFY_TLS=false on the WORKERS skips certificate "
        "checks (only for hosts you trust)"
    ),
    "timeout": (
        "no answer in time: raise FETCHFLEET_CONNECT_TIMEOUT, FETCHFLEET_READ_TIMEOUT or "
        "FETCHFLEET_TOTAL_TIMEOUT (seconds) on the WORKERS, or FETCHFLEET_MAX_ATTEMPTS for more tries"
    ),
    "connect": (
        "the servers refused or dropped the connection: FETCHFLEET_MAX_ATTEMPTS and "
        "FETCHFLEET_RETRY_BACKOFF_BASE on the WORKERS give them more tries"
    ),
    "too_large": "bodies over FETCHFLEET_MAX_BODY_BYTES (read by the WORKERS) are refused",
    "too_many_redirects": "more redirects than FETCHFLEET_MAX_REDIRECTS (read by the WORKERS)",
}


TRUNCATED_HINT = "the WORKERS' FETCHFLEET_MAX_STORED_BODY_BYTES (`body_truncated` in those results)"


def _with_set_here(hint: str, set_here: Collection[str]) -> str:
    """A hint naming a worker-only variable that is set on this side too: there it changed nothing."""
    named_here = [name for name in set_here if name in hint]
    if not named_here:
        return hint
    return (
        f"{hint}. {', '.join(named_here)} is set in this command's environment, but only the workers "
        "read it: this setting had no effect"
    )


def outcome_of(doc: dict[str, Any]) -> str:
    """`ok`, `HTTP 4xx`, `HTTP 5xx`, or the error kind."""
    error = doc.get("error")
    if error:
        return str(error.get("kind", "internal"))
    status = doc.get("status")
    if doc.get("ok"):
        return "ok"
    if isinstance(status, int):
        return f"HTTP {status // 100}xx"
    return "internal"


@dataclass
class Summary:
    """Counts of every result written; `failed` counts from what was written, so it can never pass `done`."""

    done: int = 0
    failed: int = 0
    errors: int = 0  # results with an error kind (a fetch that got no usable response)
    truncated: int = 0  # bodies kept (--store-body) but cut at the workers' stored-body cap
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, doc: dict[str, Any]) -> None:
        # Once per result written (30,000 a second and more): the fields read once each, outcome_of's
        # rule inlined for the common case, the example's redaction only for an outcome's first result.
        error, ok = doc.get("error"), doc.get("ok")
        self.done += 1
        if error:
            self.errors += 1
            outcome = str(error.get("kind", "internal"))
        elif ok:
            outcome = "ok"
        else:
            outcome = outcome_of(doc)
        if not ok:
            self.failed += 1
        if doc.get("body_truncated"):
            self.truncated += 1
        counts = self.counts
        if outcome in counts:
            counts[outcome] += 1
            return
        counts[outcome] = 1
        if outcome not in self.examples:
            self.examples[outcome] = redact(str(doc.get("url", "")))

    def lines(self, set_here: Collection[str] = ()) -> list[str]:
        """The summary as lines for stderr: a count per outcome, an example, and hints; `set_here` names
        worker-only variables set on this (the submitting) side, which a hint then calls out."""
        order = sorted(self.counts, key=lambda o: (o != "ok", not o.startswith("HTTP"), -self.counts[o], o))
        width = max((len(o) for o in order), default=0)
        out = []
        for outcome in order:
            example = "" if outcome == "ok" else f"  e.g. {_printable(self.examples[outcome])}"
            out.append(f"  {outcome:<{width}}  {self.counts[outcome]:>7}{example}")
        for outcome in order:
            if outcome in HINTS:
                out.append(_with_set_here(f"hint: {outcome}: {HINTS[outcome]}", set_here))
        if self.truncated:
            were = "body was" if self.truncated == 1 else "bodies were"
            out.append(
                _with_set_here(f"hint: {self.truncated} kept {were} cut at {TRUNCATED_HINT}", set_here)
            )
        return out

    def should_fail(self, fail_on: str) -> bool:
        if fail_on == "any":
            return self.failed > 0
        if fail_on == "error-kinds":
            return self.errors > 0
        return False


def _printable(text: str) -> str:
    """Control characters escaped: a stored URL must not be able to move the cursor or forge a line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
