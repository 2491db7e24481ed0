"""Which work queues are full: shed a burst without a JetStream round trip per request.

A full replica queue refuses a publish (discard-new-per-subject), and the router then
tries the next candidate. In a burst, every request would spend one round trip per
candidate only to hear "full" again; with many routing tasks in flight they all pass any
check before the first refusal comes back, and ``overloaded`` arrives after hundreds of
milliseconds instead of at once. Two facts let the router skip those round trips:

- a queue refused a moment ago almost surely still is full: it is remembered for ``ttl``
  seconds, after which the next request asks JetStream again (admission stays within one
  ``ttl`` of what the queues allow);
- a queue of bound B cannot take more than B publishes that are still in flight, however
  empty it was: once B are outstanding, the next is treated as refused.

When every queue of the fleet is remembered full, the router sheds a request right after
decoding it. Pure: the clock comes in as an argument.
"""

from __future__ import annotations

from collections import Counter


class FullQueues:
    """Subjects a publish was refused on (each until ``ttl`` has passed) and publishes in flight."""

    def __init__(self, ttl: float, bound: int) -> None:
        self.ttl = ttl
        self.bound = bound  # messages a work subject holds (the stream's max_msgs_per_subject)
        self._until: dict[str, float] = {}  # bounded by the number of work subjects
        self._in_flight: Counter[str] = Counter()

    def mark(self, subject: str, now: float) -> None:
        if self.ttl > 0:
            self._until[subject] = now + self.ttl

    def count(self, now: float) -> int:
        """How many subjects are remembered as full right now."""
        for subject in [s for s, until in self._until.items() if now >= until]:
            del self._until[subject]
        return len(self._until)

    def is_full(self, subject: str, now: float) -> bool:
        if self._in_flight[subject] >= self.bound:
            return True
        until = self._until.get(subject)
        if until is None:
            return False
        if now >= until:
            del self._until[subject]
            return False
        return True

    def publishing(self, subject: str) -> None:
        self._in_flight[subject] += 1

    def published(self, subject: str) -> None:
        left = self._in_flight[subject] - 1
        if left > 0:
            self._in_flight[subject] = left
        else:
            del self._in_flight[subject]
