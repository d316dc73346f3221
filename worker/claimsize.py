"""How many chunks a worker claims at a poll: no more than its free fetch slots can start soon.

A fixed number (arq's max_jobs, 8 here before) let the first idle worker to poll take a whole small
batch while a second idle worker got nothing (issue 11). Sizing by free slots gives an idle worker
one chunk's worth per free chunk of slots, and a busy one what its finishing fetches will free
before its next claim takes effect, so the slots stay full without hoarding.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# How far ahead a claim looks: a claimed chunk starts fetching a poll, a claim round trip and a
# chunk-state round trip later. ops/bench: 0.1 s keeps the slots of a busy worker full.
HORIZON_S = 0.1
# The fetch rate is measured over about this long (sampled at every poll), and read once the window
# spans at least RATE_MIN_S: a worker that just got busy shows its rate within a few polls.
RATE_WINDOW_S = 0.5
RATE_MIN_S = 0.02
# The most URLs a worker holds in claimed chunks, per fetch slot: a memory bound, not a throughput one.
# A chunk stays held until its slowest URL is done; with a few slow hosts (ops/bench --profile web:
# 2 % of hosts at 1 s, the rest 50 ms) nearly every chunk has one, so a worker holds about its rate
# times the slow hosts' latency in URLs. A fixed small count of chunks (4 x the slots' worth) left
# slots empty while chunks waited for their slow URLs (0.55x the gather script). How many chunks are
# claimed is still set by free slots (ClaimSizer), so URLs not yet in a slot stay about one
# concurrency's worth; what this bounds is the finished URLs of chunks still waiting for a slow one,
# about 0.9 KB each (a chunk job's URL and its finished task): at most ~15 KB a slot, 30 MB at
# concurrency 2,000. 16 a slot lets a worker at 50 ms a response keep its slots full while a slow
# host answers in up to ~0.8 s; past that the slots still fill, only more slowly.
HELD_URLS_PER_SLOT = 16


def chunks_held(concurrency: int, chunk_size: int) -> int:
    """The most chunks a worker holds at once (arq's max_jobs): HELD_URLS_PER_SLOT URLs per slot."""
    return max(8, math.ceil(HELD_URLS_PER_SLOT * concurrency / chunk_size))


@dataclass
class ClaimSizer:
    concurrency: int
    chunk_size: int
    horizon_s: float = HORIZON_S
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def rate(self, now: float, fetches: int) -> float:
        """Fetches finished per second over the last RATE_WINDOW_S or so."""
        samples = self._samples
        samples.append((now, fetches))
        while now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()
        then, before = samples[0]
        return (fetches - before) / (now - then) if now - then >= RATE_MIN_S else 0.0

    def chunks(self, *, now: float, fetches: int, in_flight: int, waiting: int, reserved: int) -> int:
        """Chunks to claim: URLs the slots can start within the horizon, over URLs already held.

        `waiting`: URLs of running chunks not yet in a slot; `reserved`: URLs expected from chunks
        claimed but not started. A chunk is counted as `chunk_size` URLs (retry chunks may be
        smaller: then the next poll claims again).
        """
        soon = self.concurrency - in_flight + self.rate(now, fetches) * self.horizon_s
        room = soon - waiting - reserved
        return math.ceil(room / self.chunk_size) if room > 0 else 0
