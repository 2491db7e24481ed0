"""A consistent-hash ring: a deterministic order of replicas for any key, in O(1).

Rendezvous hashing gives the same answer but scores every replica per request, which is
linear in the fleet. Here replicas own points on a 64-bit ring (``VNODES`` each), and a
key's candidates are the distinct replicas met walking clockwise from it. So that the
request path pays neither a bisection over thousands of points nor the walk, the ring is
cut into ``2**TABLE_BITS`` equal slices and each slice keeps the walk from its start (as
Maglev does with its lookup table): a key's candidates are one list index away, and a
replica joining or leaving changes only the slices whose walk met it. Every router that
knows the same replicas builds the same ring (xxhash, not Python's salted ``hash``), so
they agree on where a new prefix goes without talking to each other.
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
_MASK = (1 << 64) - 1


T = TypeVar("T")


def point(replica: str, vnode: int) -> int:
    return xxhash.xxh3_64_intdigest(replica.encode(), vnode)


class HashRing(Generic[T]):
    """Immutable: build a new ring when the set of replicas changes.

    ``resolve`` turns a replica's name into what ``successors`` lists for it (the name
    itself by default; the router lists each replica's live load object, so a candidate
    costs no dict lookup).
    """

    __slots__ = ("_owners", "_points", "_resolve", "_shift", "_table", "size")

    def __init__(self, replicas: Iterable[str], vnodes: int = VNODES,
                 table_bits: int = TABLE_BITS, resolve: Callable[[str], T] | None = None) -> None:
        pairs = sorted((point(r, v), r) for r in set(replicas) for v in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [r for _, r in pairs]
        self.size = len(set(self._owners))
        self._shift = 64 - table_bits
        self._resolve: Callable[[str], T] = resolve or (lambda name: name)  # type: ignore[assignment,return-value]
        # slice -> its walk, built lazily (``fill`` builds it all at once)
        self._table: list[tuple[T, ...] | None] = [None] * (1 << table_bits)

    def fill(self, count: int) -> HashRing[T]:
        """Build every slice's walk now, so no request pays for one (a few ms per 1,000
        slices; done once per membership change)."""
        for slot in range(len(self._table)):
            self.successors(slot << self._shift, count)
        return self

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
        found: list[T] = []
        resolve = self._resolve
        for owner in self.walk(slot << self._shift):
            found.append(resolve(owner))
            if len(found) >= count:
                break
        result = tuple(found)
        self._table[slot] = result
        return result

    def home(self, key: int) -> str | None:
        return next(self.walk(key), None)
