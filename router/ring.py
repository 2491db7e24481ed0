"""A consistent-hash ring: a deterministic order of replicas for any key, in O(1).

Rendezvous hashing gives the same answer but scores every replica per request, which is
linear in the fleet. Here replicas own points on a 64-bit ring (``VNODES`` each), and a
key's candidates are the distinct replicas met walking clockwise from it. So that the
request path pays neither a bisection over thousands of points nor the walk, the ring is
cut into ``2**TABLE_BITS`` equal slices and each slice keeps the walk from its start (as
Maglev does with its lookup table): a key's candidates are one list index away. Every
router that knows the same replicas builds the same ring (xxhash, not Python's salted
``hash``), so they agree on where a new prefix goes without talking to each other.

Membership changes are incremental, so no request ever pays for a rebuild: ``add`` and
``remove`` insert or delete one replica's points (O(VNODES · log n) plus a memmove) and
forget the lookup table. A slice asked for before the table is filled again walks the
ring then (a bisection and a few steps: O(log n + count)) and keeps the answer; ``fill``
computes every slice at once (at most one short walk per slice), which the router runs
off the request path, in its periodic upkeep.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import xxhash

# Virtual nodes per replica: enough that each replica owns close to 1/N of the ring.
VNODES = 32
# Slices of the lookup table; keys in one slice share their candidates.
TABLE_BITS = 12
# Candidates a slice keeps when nobody asked for more (replica choice's max_walk).
DEFAULT_DEPTH = 8
_MASK = (1 << 64) - 1


T = TypeVar("T")


def point(replica: str, vnode: int) -> int:
    # The vnode goes into the hashed bytes, not the seed: XXH3 folds the seed into short
    # inputs by a plain XOR, so names one character apart ("r30", "r31") with seeds a bit
    # apart hashed to the same points, and a 64-replica ring had 586 distinct points of
    # 2,048 (one replica owned 4x its share, some none).
    return xxhash.xxh3_64_intdigest(b"%s#%d" % (replica.encode(), vnode))


class HashRing(Generic[T]):
    """The ring of a set of replicas, kept current with ``add`` and ``remove``.

    ``resolve`` turns a replica's name into what ``successors`` lists for it (the name
    itself by default; the router lists each replica's live load object, so a candidate
    costs no dict lookup). Points are ordered by (point, name), so the ring depends only
    on the set of names, never on the order they joined in.
    """

    __slots__ = ("_depth", "_filled", "_owners", "_points", "_resolve", "_shift", "_table",
                 "_vnodes", "size")

    def __init__(self, replicas: Iterable[str] = (), vnodes: int = VNODES,
                 table_bits: int = TABLE_BITS, resolve: Callable[[str], T] | None = None) -> None:
        pairs = sorted((point(r, v), r) for r in set(replicas) for v in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [r for _, r in pairs]
        self._vnodes = vnodes
        self.size = len(set(self._owners))
        self._shift = 64 - table_bits
        self._resolve: Callable[[str], T] = resolve or (lambda name: name)  # type: ignore[assignment,return-value]
        self._depth = DEFAULT_DEPTH  # the most candidates anyone asked a slice for
        # slice -> its walk; None until asked for (or filled)
        self._table: list[tuple[T, ...] | None] = [None] * (1 << table_bits)
        self._filled = False  # every slice of the table holds its walk

    # ---- membership -----------------------------------------------------------------------
    def __contains__(self, replica: str) -> bool:
        if not self._points:
            return False
        p = point(replica, 0)
        i = bisect.bisect_left(self._points, p)
        while i < len(self._points) and self._points[i] == p:
            if self._owners[i] == replica:
                return True
            i += 1
        return False

    def add(self, replica: str) -> bool:
        """Put ``replica`` on the ring; False if it is there already."""
        if replica in self:
            return False
        points, owners = self._points, self._owners
        for v in range(self._vnodes):
            p = point(replica, v)
            i = bisect.bisect_left(points, p)
            while i < len(points) and points[i] == p and owners[i] < replica:
                i += 1  # equal points (a 64-bit collision) stay in name order
            points.insert(i, p)
            owners.insert(i, replica)
        self.size += 1
        self._forget()
        return True

    def remove(self, replica: str) -> bool:
        """Take ``replica`` off the ring; False if it was not on it."""
        if replica not in self:
            return False
        points, owners = self._points, self._owners
        for v in range(self._vnodes):
            p = point(replica, v)
            i = bisect.bisect_left(points, p)
            while owners[i] != replica:
                i += 1
            del points[i]
            del owners[i]
        self.size -= 1
        self._forget()
        return True

    def _forget(self) -> None:
        self._table = [None] * len(self._table)
        self._filled = False

    # ---- lookups --------------------------------------------------------------------------
    @property
    def filled(self) -> bool:
        return self._filled

    def fill(self, count: int | None = None) -> HashRing[T]:
        """Compute every slice's walk now, so no request walks the ring.

        Slices that start at the same point share one walk, so this costs at most
        min(points, slices) walks of a few steps each.
        """
        depth = self._depth = max(count or 0, self._depth)
        points = self._points
        n = len(points)
        slots = len(self._table)
        if not n:
            self._table = [()] * slots
            self._filled = True
            return self
        resolve = self._resolve
        by_name = {name: resolve(name) for name in set(self._owners)}
        shift = self._shift
        table: list[tuple[T, ...] | None] = []
        last_start = -1
        walk: tuple[T, ...] = ()
        for s in range(slots):
            start = bisect.bisect_left(points, s << shift) % n
            if start != last_start:
                walk = tuple([by_name[name] for name in self._walk_names(start, depth)])
                last_start = start
            table.append(walk)
        self._table = table
        self._filled = True
        return self

    def _walk_names(self, start: int, count: int) -> list[str]:
        """The first ``count`` distinct replicas from point index ``start``."""
        owners = self._owners
        n = len(owners)
        want = count if count < self.size else self.size
        seen: list[str] = []
        i = start
        # Written as a plain loop (no generator, no set): it runs on the request path when
        # a slice was forgotten after a membership change, and ``want`` is at most a dozen.
        for _ in range(n):
            owner = owners[i]
            if owner not in seen:
                seen.append(owner)
                if len(seen) >= want:
                    break
            i += 1
            if i == n:
                i = 0
        return seen

    def walk(self, key: int) -> Iterator[str]:
        """Distinct replicas in ring order from ``key``'s position: the key's home first."""
        points = self._points
        if not points:
            return
        owners = self._owners
        n = len(points)
        start = bisect.bisect_left(points, key & _MASK)
        seen: set[str] = set()
        for i in range(n):
            owner = owners[(start + i) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.size:
                    return

    def successors(self, key: int, count: int) -> tuple[T, ...]:
        """The first ``count`` replicas met walking from the start of ``key``'s slice."""
        slot = (key & _MASK) >> self._shift
        cached = self._table[slot]
        if cached is not None and (len(cached) >= count or len(cached) == self.size):
            return cached[:count] if len(cached) > count else cached
        if count > self._depth:
            self._depth = count
            self._filled = False
        if not self._points:
            result: tuple[T, ...] = ()
        else:
            n = len(self._points)
            start = bisect.bisect_left(self._points, slot << self._shift) % n
            resolve = self._resolve
            result = tuple([resolve(name) for name in self._walk_names(start, count)])
        self._table[slot] = result
        return result

    def home(self, key: int) -> str | None:
        return next(self.walk(key), None)
