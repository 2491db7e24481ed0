"""The router's view of live replicas, fed by the heartbeat bucket and the shared signals.

Pure state: heartbeats, load samples, placement records and the clock come in as
arguments, so two routers that saw the same inputs hold the same view, and tests need
no NATS. Per model, a ``Fleet`` keeps what replica choice reads in O(1): each replica's
last heartbeat and outstanding load, the fleet's total load, the hash ring of its
members, and the placement memory (which replica served which prefix and session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from router.load import ReplicaLoad
from router.order import new_order
from router.placement import DEFAULT_CAPACITY, DEFAULT_FANOUT, PlacementMemory, record
from router.ring import VNODES, HashRing
from subjects.messages import Heartbeat

# Weight of an outstanding message nobody told this router about, before it has seen any
# placement to learn the fleet's real mean from (about one short chat turn).
DEFAULT_FILL_WEIGHT = 1024
# Outstanding requests, per unit of a replica's capacity, at which it counts as saturated:
# it runs ``capacity`` and has as many again waiting.
DEFAULT_SATURATION = 2.0


@dataclass(slots=True)
class ReplicaState:
    beat: Heartbeat
    seen_at: float  # router clock when the last heartbeat arrived
    load: ReplicaLoad = field(default_factory=ReplicaLoad)


class Fleet:
    """The live replicas of one model and what replica choice needs to know about them.

    ``usable`` maps each live, non-draining replica to its load (the candidates of every
    choice); ``usable_weight`` is their total outstanding weight and ``open_count`` how many
    of them are below their saturation point (``saturation`` × capacity outstanding
    requests), both kept current so the fleet mean and "is everyone saturated?" cost O(1)
    at any size. ``fill_weight`` is the mean weight of the placements seen so far
    (``DEFAULT_FILL_WEIGHT`` before the first), kept current in the same way.

    Slots, not a ``__dict__``: replica choice (and its C twin, router/_choice.c) reads
    these on every request, and a slot is read at a fixed offset.
    """

    __slots__ = ("_by_load", "_placed_count", "_placed_weight", "_ring", "_vnodes",
                 "fill_weight", "members", "model", "open_count", "placements", "saturation",
                 "usable", "usable_weight")

    def __init__(self, model: str, *, fanout: int = DEFAULT_FANOUT,
                 placement_capacity: int = DEFAULT_CAPACITY, vnodes: int = VNODES,
                 saturation: float = DEFAULT_SATURATION) -> None:
        self.model = model
        self.saturation = saturation
        self.members: dict[str, ReplicaState] = {}
        self.usable: dict[str, ReplicaLoad] = {}
        self.usable_weight = 0
        self.open_count = 0
        self.placements = PlacementMemory(placement_capacity, fanout)
        self._vnodes = vnodes
        self._ring: HashRing[ReplicaLoad] | None = None
        self._placed_weight = 0
        self._placed_count = 0
        self.fill_weight = DEFAULT_FILL_WEIGHT
        # The usable, unsaturated replicas by outstanding weight (router/order.py): told of
        # every change of a usable replica's load, so ``least_loaded`` is O(1) and a change
        # O(log n) instead of a scan of the fleet per question.
        self._by_load = new_order(self.usable)

    # ---- membership ---------------------------------------------------------------------
    def beat(self, beat: Heartbeat, now: float) -> bool:
        """Apply a heartbeat; True when it newly says the replica is draining."""
        name = beat.replica
        state = self.members.get(name)
        newly_draining = beat.draining and (state is None or not state.beat.draining)
        if state is None:
            state = self.members[name] = ReplicaState(beat, now, ReplicaLoad(name=name))
            if self._ring is not None:
                self._ring.add(name)
        else:
            state.beat = beat
            state.seen_at = now
        load = state.load
        was_open = name in self.usable and load.open
        load.limit = self.saturation * max(beat.capacity, 1)
        load.capacity = max(beat.capacity, 1)
        if beat.draining:
            if self.usable.pop(name, None) is not None:
                self.usable_weight -= load.weight
                self._by_load.discard(load)
        elif name not in self.usable:
            self.usable[name] = load
            self.usable_weight += load.weight
        load.usable = not beat.draining
        self.open_count += (name in self.usable and load.open) - was_open
        if load.usable:
            self._by_load.update(load)
        return newly_draining

    def remove(self, replica: str) -> bool:
        state = self.members.pop(replica, None)
        if state is None:
            return False
        if self.usable.pop(replica, None) is not None:
            self.usable_weight -= state.load.weight
            self.open_count -= state.load.open
            self._by_load.discard(state.load)
        state.load.usable = False
        if self._ring is not None:
            self._ring.remove(replica)
        return True

    @property
    def ring(self) -> HashRing[ReplicaLoad]:
        """Every member, draining or not (a replica that drains keeps its ring positions);
        its successors are the members' load objects (``.name``, ``.usable``, …).

        Built from all members at once on first use; after that, joins and leaves update
        it in place (router.ring), so no request pays for a rebuild.
        """
        if self._ring is None:
            members = self.members
            self._ring = HashRing(members, self._vnodes, resolve=lambda name: members[name].load)
        return self._ring

    def refresh(self, depth: int | None = None) -> None:
        """Upkeep off the request path: build the ring and fill its lookup table if a
        membership change left it to be filled, so requests find every slice ready."""
        ring = self.ring
        if not ring.filled:
            ring.fill(depth)

    def least_loaded(self) -> str | None:
        """The usable, unsaturated replica with the least outstanding weight (ties by
        name); None when every one is saturated."""
        return self._by_load.least()

    @property
    def usable_count(self) -> int:
        return len(self.usable)

    # ---- load ---------------------------------------------------------------------------
    def load(self, replica: str) -> int:
        return self.members[replica].load.weight

    def placed(self, replica: str, weight: int, prefix_hashes: Sequence[int] = (),
               session_hash: int = 0) -> None:
        """A request went to ``replica``'s own queue (this router's, or another's record)."""
        record(self.placements, replica, prefix_hashes, session_hash)  # C twin, or the method
        state = self.members.get(replica)
        if state is None:  # its heartbeat has not arrived yet: the placement still counts
            return
        load = state.load
        was_open = load.open
        load.placed(weight)
        if replica in self.usable:
            self.usable_weight += weight
            self.open_count += load.open - was_open
            self._by_load.update(load)
        self._placed_weight += weight
        self._placed_count += 1
        self._refill()

    def unplaced(self, replica: str, weight: int) -> None:
        """Take back a placement of ``weight`` on ``replica`` whose publish was refused
        (the prefixes it recorded stay: the replica was chosen for them, and is full)."""
        state = self.members.get(replica)
        if state is None:
            return
        load = state.load
        before, was_open = load.weight, load.open
        if not load.cancel(weight):
            return
        self._placed_weight -= weight
        self._placed_count -= 1
        self._refill()
        if replica in self.usable:
            self.usable_weight += load.weight - before
            self.open_count += load.open - was_open
            self._by_load.update(load)

    def sample(self, replica: str, outstanding: int) -> None:
        """``replica``'s own queue holds ``outstanding`` messages (queued + being served)."""
        state = self.members.get(replica)
        if state is None:
            return
        load = state.load
        before, was_open = load.weight, load.open
        load.sample(outstanding, self.fill_weight)
        if replica in self.usable:
            self.usable_weight += load.weight - before
            self.open_count += load.open - was_open
            self._by_load.update(load)

    def _refill(self) -> None:
        # An attribute, not a property: replica choice reads it on every request.
        count = self._placed_count
        self.fill_weight = self._placed_weight // count if count else DEFAULT_FILL_WEIGHT


@dataclass(slots=True)
class ReplicaTable:
    """Live replicas per model. A replica without a heartbeat for ``ttl`` is dead.

    ``load_from_heartbeats``: use each heartbeat's in-flight count as the load sample
    (when nothing better is fed through ``sample``; a heartbeat cannot see messages still
    waiting in the stream, so JetStream's per-subject counts are the better sample).
    """

    ttl: float
    load_from_heartbeats: bool = True
    fanout: int = DEFAULT_FANOUT
    placement_capacity: int = DEFAULT_CAPACITY
    saturation: float = DEFAULT_SATURATION
    _fleets: dict[str, Fleet] = field(default_factory=dict)

    def fleet(self, model: str) -> Fleet:
        fleet = self._fleets.get(model)
        if fleet is None:
            fleet = self._fleets[model] = Fleet(
                model, fanout=self.fanout, placement_capacity=self.placement_capacity,
                saturation=self.saturation)
        return fleet

    def apply(self, beat: Heartbeat, now: float) -> bool:
        """Apply a heartbeat; True when it newly says the replica is draining."""
        fleet = self.fleet(beat.model)
        newly_draining = fleet.beat(beat, now)
        if self.load_from_heartbeats:
            fleet.sample(beat.replica, beat.in_flight + beat.queue_depth)
        return newly_draining

    def remove(self, model: str, replica: str) -> bool:
        fleet = self._fleets.get(model)
        return fleet is not None and fleet.remove(replica)

    def refresh(self, depth: int | None = None) -> None:
        """Every fleet's upkeep (Fleet.refresh); the router runs it periodically."""
        for fleet in self._fleets.values():
            if fleet.members:
                fleet.refresh(depth)

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop replicas whose heartbeat is older than ``ttl``; return (model, replica)."""
        dead = [
            (model, replica)
            for model, fleet in self._fleets.items()
            for replica, state in fleet.members.items()
            if now - state.seen_at > self.ttl
        ]
        for model, replica in dead:
            self.remove(model, replica)
        return dead

    def live(self, model: str) -> dict[str, ReplicaState]:
        """Replicas of ``model`` (call ``expire`` first to drop the silent ones)."""
        fleet = self._fleets.get(model)
        return fleet.members if fleet is not None else {}

    def models(self) -> frozenset[str]:
        return frozenset(m for m, f in self._fleets.items() if f.members)

    def __len__(self) -> int:
        return sum(len(f.members) for f in self._fleets.values())
