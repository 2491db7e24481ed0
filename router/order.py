"""A fleet's usable, unsaturated replicas by outstanding weight: ``Fleet.least_loaded``.

Two implementations of one small interface, ``update(load)`` after any change of a
load's weight, requests or limit, ``discard(load)`` when it leaves the usable replicas,
``least()`` for the name of the one with least weight (ties by name; None when every one
is saturated):

- ``LoadOrder`` (router/_choice.c, when built): an indexed heap of the loads themselves;
  a change moves the load's one entry. What the router runs.
- ``HeapOrder`` below: heapq with stale entries. The reference (tests/test_order.py
  drives both with the same changes and compares every answer), and what runs without
  a C compiler or with SLM_PURE_PYTHON=1.

Why two: heapq cannot move an entry, so HeapOrder pushes a new key at every change and
drops stale ones as they surface, and they surface in bursts (a claim now and then
popped ~80 of them, ~1.5 us each: bench/decision.py's claim p99 at 64 replicas).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Protocol

from router.context import PURE_PYTHON

if TYPE_CHECKING:
    from router.load import ReplicaLoad


class Order(Protocol):
    def update(self, load: ReplicaLoad) -> None: ...
    def discard(self, load: ReplicaLoad) -> None: ...
    def least(self) -> str | None: ...
    def __len__(self) -> int: ...


class HeapOrder:
    """``(weight, name)`` of the fleet's usable replicas in a min-heap with stale entries:
    every change pushes the load's new key, and an entry whose replica left, changed or
    saturated since is dropped when it reaches the top. O(log n) amortised per change."""

    __slots__ = ("_heap", "_usable")

    def __init__(self, usable: dict[str, ReplicaLoad]) -> None:
        self._heap: list[tuple[int, str]] = []
        self._usable = usable  # the fleet's own dict (name -> load), read for staleness

    def update(self, load: ReplicaLoad) -> None:
        """Record ``load``'s new key (it is usable). Stale entries that surface at the top
        are dropped here, on the bookkeeping side, so that ``least`` (on the decision
        side) almost always finds its answer at the top."""
        heap = self._heap
        usable = self._usable
        if len(heap) > 4 * len(usable) + 64:
            heap[:] = [(x.weight, name) for name, x in usable.items()]
            heapq.heapify(heap)
            return  # the rebuild holds every usable replica's current key, this one's too
        heapq.heappush(heap, (load.weight, load.name))
        while heap:
            weight, name = heap[0]
            top = usable.get(name)
            if top is not None and top.weight == weight and top.requests < top.limit:
                return
            heapq.heappop(heap)

    def discard(self, load: ReplicaLoad) -> None:
        """Nothing to do: its entries go stale (it is no longer in the fleet's usable dict)."""

    def least(self) -> str | None:
        heap = self._heap
        usable = self._usable
        while heap:
            weight, name = heap[0]
            load = usable.get(name)
            if load is not None and load.weight == weight and load.requests < load.limit:
                return name
            # Stale (the replica's load changed since, or it left) or saturated: a later
            # change of that replica pushes its key again.
            heapq.heappop(heap)
        return None

    def __len__(self) -> int:
        return len(self._heap)


try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._choice import LoadOrder
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    LoadOrder = None

NATIVE_ORDER = LoadOrder is not None


def new_order(usable: dict[str, ReplicaLoad]) -> Order:
    """The order a fleet keeps over ``usable`` (its name -> load dict)."""
    if LoadOrder is not None:
        order: Order = LoadOrder()
        return order
    return HeapOrder(usable)
