"""Graceful stop: stop starting fetches, let those in flight finish, hand the rest of a chunk back."""

from __future__ import annotations


class HandBack(Exception):
    """Raised by a chunk that stopped early for a graceful stop; the queue runs it again elsewhere.

    Raised only after every fetch the chunk started has finished and been recorded, so the next run
    skips those (done bitmap) and fetches only what was never started: nothing is fetched twice.
    """

    def __init__(self, batch_id: str, handed_back: int) -> None:
        super().__init__(f"batch {batch_id}: {handed_back} unstarted URLs handed back")
        self.batch_id = batch_id
        self.handed_back = handed_back
