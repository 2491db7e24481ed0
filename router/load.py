"""How much work waits on one replica, as a router can know it between samples.

Two shared signals meet here. Every placement (this router's own, and every other
router's from the placements subject) adds its token weight at once. Now and then a
*sample* says how many messages the replica's own queue still holds (queued + being
served: a WorkQueue stream deletes a message only when the worker acks it, after the
final chunk), read from JetStream's per-subject counts or from a heartbeat. A replica
takes work first in, first out and runs up to ``capacity`` sequences at once, so of "n
messages outstanding" the n − capacity newest placements are queued (priced exactly)
and the rest are running — priced as the heaviest of the placements just before the
queued ones, since short answers leave before long ones taken earlier. The estimate is
that plus whatever was placed since — fresh between samples.

Pure: no clock, no NATS; O(1) per placement and per question, O(n log n) per sample of
n outstanding messages (off the request path).
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from operator import sub

from router.context import PURE_PYTHON
from subjects.messages import CacheClass

# Where weight, requests, limit, usable and name live. With router/_choice.c built, in its
# LoadCell: Python reads and writes them as before (the same objects back), and replica
# choice's C twin reads them as doubles in the load's first cache line instead of chasing
# an int or float object a line away for each (a choice 0.4 us faster in a quiet phase
# of this box, 0.7-1.6 in a slow one). Without it (no compiler, SLM_PURE_PYTHON=1): slots.
_CELL_FIELDS = ("limit", "name", "requests", "usable", "weight")
_OWN_FIELDS: tuple[str, ...]
try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._choice import LoadCell as _LoadBase
except ImportError:
    _LoadBase = object
    _OWN_FIELDS = _CELL_FIELDS
else:
    _OWN_FIELDS = ()

# Placements kept behind the oldest outstanding one, so a sample that arrives late (and
# counts a few more outstanding messages than the last one) can still be priced exactly.
_SLACK = 256


class ReplicaLoad(_LoadBase):  # type: ignore[misc]
    """Outstanding token weight and request count on one replica's own queue.

    ``weight`` and ``requests`` are plain attributes kept current on every update, so
    replica choice reads them without a computation (in C, from the LoadCell base: see
    above). ``limit`` is the outstanding request count at which the replica counts as
    saturated (its capacity from its heartbeat × the fleet's saturation factor), kept
    here for the same reason.
    """

    __slots__ = ("_base", "_cum", "_oldest", "as_cold", "as_prefix_hit", "as_sticky", "capacity",
                 *_OWN_FIELDS)

    def __init__(self, limit: float = 2.0, name: str = "", capacity: int = 1) -> None:
        self._cum: deque[int] = deque([0])  # cumulative weight after each placement
        self._base = 0  # placement index of _cum[0]
        self._oldest = 0  # index of the oldest placement still outstanding
        self.weight = 0
        self.requests = 0
        self.limit = limit
        self.capacity = capacity  # sequences it runs at once (its heartbeat's capacity)
        self.name = name
        self.usable = True  # alive and not draining (kept by router.registry.Fleet)
        # Its entries in a replica choice's answer, made once: the choice then allocates
        # nothing per candidate.
        self.as_cold = (name, CacheClass.COLD)
        self.as_prefix_hit = (name, CacheClass.PREFIX_HIT)
        self.as_sticky = (name, CacheClass.SESSION_STICKY)

    if _LoadBase is object:  # with the C base, LoadCell's own getter (the same comparison)

        @property
        def open(self) -> bool:
            """Below its saturation point: it may take more work."""
            return self.requests < self.limit

    @property
    def placements(self) -> int:
        return self._base + len(self._cum) - 1

    def placed(self, weight: int) -> None:
        self._cum.append(self._cum[-1] + weight)
        self.weight += weight
        self.requests += 1

    def cancel(self, weight: int) -> bool:
        """Take back the newest placement of ``weight`` (its publish was refused), as if it
        had never been made; False if none is left to take back.

        Placements made since stay, in their order: the search and the fix-up run over
        those alone, a handful at most (a refusal comes back within a round trip).
        """
        cum = self._cum
        for pos in range(len(cum) - 1, 0, -1):
            if cum[pos] - cum[pos - 1] == weight:
                break
        else:
            return False
        outstanding = self._base + pos - 1 >= self._oldest
        del cum[pos]
        for later in range(pos, len(cum)):
            cum[later] -= weight
        if outstanding:
            self.weight -= weight
            self.requests = max(self.requests - 1, 0)
        else:
            self._oldest -= 1  # the outstanding ones moved down one place
        return True

    def sample(self, outstanding: int, fill_weight: int) -> None:
        """The replica's queue holds ``outstanding`` messages now.

        When it holds more than this router has seen placed (the router started late, a
        record was lost), each unknown message is priced at ``fill_weight``.
        """
        outstanding = max(outstanding, 0)
        oldest = self.placements - outstanding
        missing = 0
        if oldest < self._base:
            missing = self._base - oldest
            oldest = self._base
        cum = self._cum
        self._oldest = oldest
        known = outstanding - missing
        last = len(cum) - 1
        # A replica runs up to ``capacity`` sequences and takes the rest first in, first
        # out: the queued ones are exactly the newest placements. The running ones are
        # not the next newest: a short answer finishes before a long one taken earlier,
        # so those still running are mostly the heavy ones — priced as the heaviest
        # ``running`` of the placements just older than the queued ones (1.5× as many).
        # Pricing them newest-first under-counted a replica busy with long answers,
        # which then took more work.
        running = known if known < self.capacity else self.capacity
        queued = known - running
        weight = cum[last] - cum[last - queued]
        top = last - queued
        span = min(running + (running + 1) // 2, top)
        if span > running:
            # The span's steps read from the deque's right end (indexing a deque walks its
            # blocks), their largest summed after a sort: heapq.nlargest took ~6 us for 8
            # of 12, and the router samples every replica of a fleet in one go.
            newest = list(islice(reversed(cum), queued, queued + span + 1))  # cum[top] down to cum[top - span]
            steps = sorted(map(sub, newest, islice(newest, 1, None)))
            weight += sum(steps[span - running:])
        else:
            weight += cum[top] - cum[top - running]
        self.weight = weight + missing * fill_weight
        self.requests = outstanding
        while self._base < oldest - _SLACK:
            cum.popleft()
            self._base += 1
