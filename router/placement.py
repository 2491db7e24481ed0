"""Where prefixes and sessions were placed recently: the router's map of warm caches.

A replica that served a prompt holds that prompt's KV blocks for a while, so "where did
this prefix go last time" is the best cheap guess of where it is cached. Each router
records its own placements and applies the placement records other routers publish on
the shared placements subject, so every router keeps (nearly) the same map without a
protocol of its own: records are facts, and applying one twice changes nothing here.

A prefix remembers its most recent ``fanout`` holders. A prefix with a full list of
holders has spread over the fleet (a shared system prompt, or the first block every
Mooncake request shares): replica choice then treats it as held everywhere.

Pure and bounded: plain dicts in two generations (when the newer one fills, the older one
is dropped whole), so the memory holds between ``capacity / 2`` and ``capacity`` hashes
and every operation is O(1) per hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

# More holders than this per prefix would only widen the search without adding a warmer
# candidate; with 4, a prefix that four replicas served lately counts as fleet-wide.
DEFAULT_FANOUT = 4
DEFAULT_CAPACITY = 1 << 20

V = TypeVar("V")


class _TwoGenerations(Generic[V]):
    """A dict that forgets in bulk: O(1) inserts and lookups, no per-entry LRU links."""

    __slots__ = ("_capacity", "new", "old")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 2)
        self.new: dict[int, V] = {}
        self.old: dict[int, V] = {}

    def get(self, key: int) -> V | None:
        got = self.new.get(key)
        if got is None:
            got = self.old.get(key)
        return got

    def put(self, key: int, value: V) -> None:
        self.new[key] = value
        if len(self.new) >= self._capacity // 2:
            self.old = self.new
            self.new = {}

    def __contains__(self, key: int) -> bool:
        return key in self.new or key in self.old

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


class PlacementMemory:
    """Prefix hash → replicas that served it (most recent first); session → replica.

    Each prefix entry also carries how many leading blocks of that prompt had spread over
    the fleet when it was last placed, so one dict lookup answers both questions.
    """

    __slots__ = ("_fanout", "_prefixes", "_sessions")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, fanout: int = DEFAULT_FANOUT) -> None:
        self._prefixes: _TwoGenerations[tuple[tuple[str, ...], int]] = _TwoGenerations(capacity)
        self._sessions: _TwoGenerations[str] = _TwoGenerations(max(capacity // 8, 2))
        self._fanout = fanout

    @property
    def fanout(self) -> int:
        return self._fanout

    # ---- lookups (the decision path) ----------------------------------------------------
    def session(self, session_hash: int) -> str | None:
        return self._sessions.get(session_hash)

    def holders(self, prefix_hash: int) -> tuple[str, ...]:
        """Replicas that served this prefix recently, most recent first."""
        entry = self._prefixes.get(prefix_hash)
        return entry[0] if entry is not None else ()

    def deepest(self, hashes: Sequence[int]) -> int:
        """The largest depth ``d`` whose hash ``hashes[d - 1]`` was placed; 0 if none."""
        return self.lookup(hashes)[0]

    def lookup(self, hashes: Sequence[int], hint: int = 0) -> tuple[int, int, tuple[str, ...]]:
        """What replica choice asks, in one call: (deepest placed depth, how many of those
        blocks have spread over the fleet, the holders of the deepest one if it has not).

        Binary search over the depths: a placement records every depth of its prompt at
        once, so when depth d is known every shallower depth of the same prompt is too (a
        generation drop forgets old entries together, deepest ones included). ``hint`` is a
        guess of the answer (the context's ``prefix_seen_depth``): when right, two or three
        dict lookups confirm it. When the deepest placed prefix has spread, its holders are
        not returned: every replica is assumed to hold it, so none is preferred.
        """
        if not hashes:
            return 0, 0, ()
        prefixes = self._prefixes
        new = prefixes.new
        old = prefixes.old
        size = len(hashes)
        if 0 < hint <= size and (hashes[hint - 1] in new or hashes[hint - 1] in old) and (
                hint == size or not (hashes[hint] in new or hashes[hint] in old)):
            matched = hint
        elif hashes[size - 1] in new or hashes[size - 1] in old:
            matched = size
        else:
            low = 0
            high = size - 1
            while low < high:
                mid = (low + high + 1) // 2
                h = hashes[mid - 1]
                if h in new or h in old:
                    low = mid
                else:
                    high = mid - 1
            matched = low
            if not matched:
                return 0, 0, ()
        key = hashes[matched - 1]
        entry = new.get(key) or old.get(key)
        assert entry is not None
        holders, shared = entry
        if len(holders) >= self._fanout:
            return matched, matched, ()
        return matched, shared, holders

    # ---- updates (after a publish, or a record from another router) -----------------------
    def record(self, replica: str, prefix_hashes: Sequence[int], session_hash: int = 0) -> None:
        prefixes = self._prefixes
        fanout = self._fanout
        shared = 0
        spreading = True
        for h in prefix_hashes:
            entry = prefixes.get(h)
            if entry is None:
                holders: tuple[str, ...] = (replica,)
            elif entry[0][0] == replica:
                holders = entry[0]
            else:
                holders = (replica, *[r for r in entry[0] if r != replica][: fanout - 1])
            if spreading:
                if len(holders) >= fanout:
                    shared += 1
                else:
                    spreading = False
            if entry is None or entry[0] is not holders or entry[1] != shared or h not in prefixes.new:
                prefixes.put(h, (holders, shared))
        if session_hash:
            self._sessions.put(session_hash, replica)

    def __len__(self) -> int:
        return len(self._prefixes)
