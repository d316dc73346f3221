"""The result stream's format: entries of newline-joined result documents, and cursors inside them.

record.lua writes the fresh results of one flush that keep no body in Redis as ONE entry: field `r`
holds their JSON documents joined by "\\n" (a document is one line of compact JSON), at most
RESULTS_PER_ENTRY of them. A result with a body kept in Redis has an entry of its own, `r` its document
and `b` the body. An entry written before grouping is the one-line case of the same format.

A cursor names the last result taken: `<entry-id>` once every result of that entry is taken (so the
cursor of a one-result entry is its id, as before grouping), `<entry-id>/<k>` once its first k are
(1 <= k < its results). "0-0" is the start. Resuming from a cursor yields exactly the results after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESULTS_PER_ENTRY = 100  # bounds an entry (~40 KB) and so a reader's page of entries
START = "0-0"
PAGE_RESULTS = 1000  # results a reader asks for per round trip (pages count entries: sized from the last)

_CURSOR = re.compile(r"(\d+(?:-\d+)?)(?:/(\d+))?")

Result = tuple[str, bytes, bytes | None]  # (cursor, result document, stored body or None)


@dataclass(frozen=True, slots=True)
class Cursor:
    entry: str  # a stream entry id
    taken: int | None = None  # None: every result of the entry is taken; else its first `taken`

    @property
    def trim_below(self) -> str:
        """XTRIM MINID: the first entry id not wholly taken (every entry below it is)."""
        if self.taken is not None:
            return self.entry
        ms, _, seq = self.entry.partition("-")
        return f"{ms}-{int(seq or 0) + 1}"


def parse_cursor(cursor: str) -> Cursor:
    """`cursor` as `results` yields it (or "0-0"); ValueError if it is not one."""
    match = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) else None
    if match is None:
        raise ValueError(f"not a result cursor: {cursor!r} (one that results() yielded, or {START!r})")
    entry, taken = match.groups()
    return Cursor(entry, int(taken) if taken is not None else None)


def entry_results(entry_id: bytes | str, fields: dict[bytes, bytes], skip: int = 0) -> list[Result]:
    """The results of one stream entry after its first `skip`, each with its cursor."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    documents = fields[b"r"]
    if b"\n" not in documents:  # a result with a body, or a flush of one
        return [(eid, documents, fields.get(b"b"))] if skip == 0 else []
    lines = documents.split(b"\n")
    last = len(lines) - 1
    out: list[Result] = [(f"{eid}/{k + 1}", lines[k], None) for k in range(skip, last)]
    if skip <= last:
        out.append((eid, lines[last], None))
    return out


def page_results(page: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Result]:
    """Every result of a page of entries (an XRANGE reply), in order."""
    return [item for entry_id, fields in page for item in entry_results(entry_id, fields)]


def page_entries(results: int, entries: int) -> int:
    """Entries to ask for next, so that a page holds about PAGE_RESULTS results as the last one did."""
    if not entries or not results:
        return PAGE_RESULTS // RESULTS_PER_ENTRY
    return max(1, min(PAGE_RESULTS, PAGE_RESULTS * entries // results))


# Delete the entries below ARGV[1] (collected) and add the results they held to the batch's `collected`
# counter, in one step: the counter counts results, and an entry holds many. KEYS[1] result stream,
# KEYS[2] batch hash. Returns how many results went. XRANGE's "(" (exclusive) needs Redis 6.2, as MINID.
FORGET_LUA = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return 0 end
local gone = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1])
if #gone == 0 then return 0 end
local find, results = string.find, 0
for _, entry in ipairs(gone) do
  local fields = entry[2]
  for f = 1, #fields, 2 do
    if fields[f] == 'r' then
      local docs = fields[f + 1]
      local p = find(docs, '\\n', 1, true)
      results = results + 1
      while p do
        results = results + 1
        p = find(docs, '\\n', p + 1, true)
      end
    end
  end
end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if results > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'collected', results)
end
return results
"""
