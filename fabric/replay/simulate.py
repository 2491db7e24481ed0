"""Offline replay: a trace through N simulated routers onto M simulated replicas.

Each router is the real thing minus NATS: a ``router.policy.Policy`` that builds the
``RoutingContext`` from the expanded request text and chooses with the real replica
code, over its own ``ReplicaTable``. What the live fabric shares through NATS arrives
here as delayed deliveries, each router applying them when it next decides:

* placement records (core NATS subject every router hears): ``record_delay`` after the
  deciding router published the work;
* load samples (JetStream per-subject counts of each replica's own queue): every
  ``sample_interval``, each router at its own phase, ``sample_delay`` after the read.

Requests reach routers as a queue group would hand them out (seeded random); a full
replica queue refuses the publish and the router tries its next candidate, as in
``router.service``. Replicas are ``fabric.replay.engine.SimReplica``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

from fabric.replay.engine import BlockLRU, ServiceModel, SimReplica, SimRequest
from fabric.replay.trace import BlockText, TraceRecord, arrival_seconds, chat_request
from fabric.stats import percentile
from router.context import PrefixMemory
from router.policy import Policy
from router.registry import ReplicaTable
from router.replicas import (
    ReplicaSettings,
    choose_least_loaded,
    choose_random,
    choose_round_robin,
)
from router.rules import DEFAULT_RULES
from subjects.messages import CacheClass, Heartbeat, PlacementRecord
from subjects.names import ANY_REPLICA

POLICIES = ("affinity", "round-robin", "random", "least-loaded")


class ReplayError(ValueError):
    """Raised when replay settings are unusable (no replicas, unknown policy, …)."""


class ReplayConfig(msgspec.Struct, frozen=True, kw_only=True):
    replicas: int = 8
    cache_blocks: int = 4096  # per replica, in trace blocks (512 tokens)
    speed: float = 1.0  # trace time / simulated time
    policy: str = "affinity"
    routers: int = 1
    service: ServiceModel = ServiceModel()
    settings: ReplicaSettings = ReplicaSettings()
    record_delay: float = 0.002  # seconds for a placement record to reach the other routers
    sample_interval: float = 0.5
    sample_delay: float = 0.001
    window_seconds: float = 10.0
    queue_bound: int = 64  # messages a replica's own subject (and .any) may hold
    model: str = "general"
    seed: int = 1
    spread_ticks: bool = True  # see fabric.replay.trace.arrival_seconds

    def check(self) -> None:
        if self.replicas < 1:
            raise ReplayError("replicas: must be at least 1")
        if self.routers < 1:
            raise ReplayError("routers: must be at least 1")
        if self.cache_blocks < 1:
            raise ReplayError("cache-blocks: must be at least 1")
        if self.speed <= 0:
            raise ReplayError("speed: must be positive")
        if self.policy not in POLICIES:
            raise ReplayError(f"policy: {self.policy!r} is not one of {', '.join(POLICIES)}")


class ReplayResult(msgspec.Struct, kw_only=True):
    policy: str
    routers: int
    replicas: int
    cache_blocks: int
    speed: float
    requests: int
    served: int
    shed: int
    via_any: int
    hit_rate: float  # prompt blocks found in the serving replica's cache / all prompt blocks
    ceiling: float  # the same with one LRU of replicas × cache_blocks, in arrival order
    ttft_mean: float
    ttft_p50: float
    ttft_p99: float
    load_max_over_mean: float  # worst 10 s window: max / mean outstanding token weight
    load_ratio_p50: float  # the median window's ratio
    assigned_max_over_mean: float  # worst window of tokens *assigned* (not outstanding)
    windows: int
    cache_classes: dict[str, int]
    choice_us_p50: float
    choice_us_p99: float
    occupancy: float  # mean running sequences / capacity, over replicas and the arrivals' span
    simulated_seconds: float
    wall_seconds: float

    @property
    def of_ceiling(self) -> float:
        return self.hit_rate / self.ceiling if self.ceiling else float("nan")


def ceiling_hit_rate(records: list[TraceRecord], total_blocks: int) -> float:
    """Hit rate of one LRU holding the whole fleet's blocks: no routing can beat it."""
    cache = BlockLRU(total_blocks)
    hit = total = 0
    for record in records:
        hit += cache.lookup_and_insert(record.hash_ids)
        total += len(record.hash_ids)
    return hit / total if total else 0.0


class _SimRouter:
    def __init__(self, index: int, config: ReplayConfig, replica_names: list[str]) -> None:
        self.name = f"router-{index}"
        self.config = config
        self.policy = Policy(DEFAULT_RULES, PrefixMemory(), replica_settings=config.settings)
        self.table = ReplicaTable(ttl=float("inf"), load_from_heartbeats=False)
        for name in replica_names:
            self.table.apply(Heartbeat(model=config.model, replica=name,
                                       capacity=config.service.capacity, warm=True), 0.0)
        self.fleet = self.table.fleet(config.model)
        self.rng = random.Random(config.seed * 1000 + index)
        self.turn = 0
        self._inbox: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def deliver(self, at: float, apply: Callable[[], None]) -> None:
        heapq.heappush(self._inbox, (at, next(self._order), apply))

    def catch_up(self, now: float) -> None:
        inbox = self._inbox
        while inbox and inbox[0][0] <= now:
            heapq.heappop(inbox)[2]()

    def choose(self, ctx: Any) -> list[tuple[str, CacheClass]]:
        policy = self.config.policy
        if policy == "affinity":
            return self.policy.choose_replicas(ctx, self.config.model, self.table)
        if policy == "round-robin":
            self.turn += 1
            return choose_round_robin(self.fleet, self.turn, self.config.settings)
        if policy == "random":
            return choose_random(self.fleet, self.rng, self.config.settings)
        return choose_least_loaded(self.fleet, self.config.settings)


def _applier(router: _SimRouter, record: PlacementRecord) -> Callable[[], None]:
    return lambda: router.policy.apply_placement(record, router.table)


def replay(records: list[TraceRecord], config: ReplayConfig, *,
           progress: TextIO | None = None, label: str = "") -> ReplayResult:
    """Replay ``records`` (in time order) and measure the outcome."""
    config.check()
    wall = time.perf_counter()
    names = [f"r{i}" for i in range(config.replicas)]
    index_of = {name: i for i, name in enumerate(names)}
    shared: deque[SimRequest] = deque()
    window_areas: list[list[float]] = [[] for _ in names]
    decode_weight = config.settings.decode_weight
    block_tokens = config.service.block_tokens

    def weigh(request: SimRequest, cached_blocks: int) -> int:
        # The router's request_weight, with what the replica really holds.
        prompt = max(request.input_length - cached_blocks * block_tokens, 1)
        return prompt + round(decode_weight * request.output_length)

    replicas = [
        SimReplica(i, config.service, BlockLRU(config.cache_blocks), shared, window_areas[i],
                   config.window_seconds, weigh)
        for i in range(config.replicas)
    ]
    routers = [_SimRouter(i, config, names) for i in range(config.routers)]
    pick = random.Random(config.seed)
    blocks = BlockText()
    samples = [(i * config.sample_interval / config.routers, i) for i in range(config.routers)]
    heapq.heapify(samples)
    choice_us: list[float] = []
    classes: dict[str, int] = {c.name.lower(): 0 for c in CacheClass}
    sim_requests: list[SimRequest] = []
    shed = via_any = 0
    model = config.model
    total = len(records)
    step = max(total // 20, 1)
    last = 0.0

    def advance_all(now: float) -> None:
        for replica in replicas:
            replica.advance(now)

    arrivals = arrival_seconds(records, config.spread_ticks)
    for n, record in enumerate(records):
        now = arrivals[n] / config.speed
        last = now
        while samples and samples[0][0] <= now:
            at, who = heapq.heappop(samples)
            advance_all(at)
            counts = [(names[r.index], r.own_outstanding) for r in replicas]
            fleet = routers[who].fleet

            def apply_sample(fleet: Any = fleet, counts: list[tuple[str, int]] = counts) -> None:
                for name, outstanding in counts:
                    fleet.sample(name, outstanding)

            routers[who].deliver(at + config.sample_delay, apply_sample)
            heapq.heappush(samples, (at + config.sample_interval, who))
        advance_all(now)
        router = routers[pick.randrange(len(routers))] if len(routers) > 1 else routers[0]
        router.catch_up(now)
        request = chat_request(record, blocks, model=model)
        ctx = router.policy.context(request)
        t0 = time.perf_counter()
        candidates = router.choose(ctx)
        choice_us.append((time.perf_counter() - t0) * 1e6)
        sim = SimRequest(n, now, record.input_length, max(record.output_length, 1),
                         record.hash_ids)
        placed = None
        for replica_name, cache_class in candidates:
            if replica_name == ANY_REPLICA:
                if len(shared) >= config.queue_bound:
                    continue
                sim.own = False
                shared.append(sim)
                for replica in replicas:
                    replica.wake(now)
                    if not shared:
                        break
                via_any += 1
            else:
                target = replicas[index_of[replica_name]]
                if target.own_outstanding >= config.queue_bound:
                    continue  # the stream refuses: discard-new-per-subject
                target.enqueue(sim, now)
            placed = (replica_name, cache_class)
            break
        if placed is None:
            shed += 1
            continue
        sim_requests.append(sim)
        classes[placed[1].name.lower()] += 1
        weight = router.policy.placed(ctx, model, placed[0], router.table)
        if len(routers) > 1 and placed[0] != ANY_REPLICA:
            record_msg = PlacementRecord(router.name, model, placed[0], weight, ctx.session_hash,
                                         ctx.prefix_hashes)
            for other in routers:
                if other is not router:
                    other.deliver(now + config.record_delay, _applier(other, record_msg))
        if progress is not None and (n + 1) % step == 0:
            print(f"\r  replay {label or config.policy}: {n + 1}/{total} requests, "
                  f"simulated {now:.0f}s", end="", file=progress, flush=True)
    for replica in replicas:
        replica.finish(float("inf"))
    end = max((r.done for r in sim_requests), default=last)
    for replica in replicas:
        replica._integrate(end)
    if progress is not None:
        print(file=progress)
    slots = len(replicas) * config.service.capacity * end
    busy = sum(r.slot_seconds for r in replicas) / slots if slots > 0 else 0.0
    return _measure(records, config, sim_requests, window_areas, last, shed, via_any, classes,
                    choice_us, end, busy, time.perf_counter() - wall)


def _measure(records: list[TraceRecord], config: ReplayConfig, served: list[SimRequest],
             window_areas: list[list[float]], last_arrival: float, shed: int, via_any: int,
             classes: dict[str, int], choice_us: list[float], end: float, busy: float,
             wall: float) -> ReplayResult:
    hit = sum(r.hit_blocks for r in served)
    blocks = sum(len(r.blocks) for r in served)
    ttft = [r.first_token - r.arrival for r in served]
    size = config.window_seconds
    full_windows = int(last_arrival // size)  # windows wholly inside the arrivals
    ratios = []
    for w in range(full_windows):
        loads = [areas[w] / size if w < len(areas) else 0.0 for areas in window_areas]
        mean = sum(loads) / len(loads)
        if mean > 0:
            ratios.append(max(loads) / mean)
    assigned = [[0.0] * config.replicas for _ in range(full_windows)]
    for r in served:
        w = int(r.arrival // size)
        if w < full_windows and r.replica >= 0:
            assigned[w][r.replica] += r.weight
    assigned_ratios = [max(a) / (sum(a) / len(a)) for a in assigned if sum(a) > 0]
    return ReplayResult(
        policy=config.policy, routers=config.routers, replicas=config.replicas,
        cache_blocks=config.cache_blocks, speed=config.speed, requests=len(records),
        served=len(served), shed=shed, via_any=via_any,
        hit_rate=hit / blocks if blocks else 0.0,
        ceiling=ceiling_hit_rate(records, config.replicas * config.cache_blocks),
        ttft_mean=sum(ttft) / len(ttft) if ttft else float("nan"),
        ttft_p50=percentile(ttft, 50), ttft_p99=percentile(ttft, 99),
        load_max_over_mean=max(ratios, default=float("nan")),
        load_ratio_p50=percentile(ratios, 50),
        assigned_max_over_mean=max(assigned_ratios, default=float("nan")),
        windows=len(ratios), cache_classes=classes,
        choice_us_p50=percentile(choice_us, 50), choice_us_p99=percentile(choice_us, 99),
        occupancy=busy, simulated_seconds=end, wall_seconds=wall,
    )


def saturation_speed(records: list[TraceRecord], config: ReplayConfig, *, low: float = 0.5,
                     high: float = 64.0, tolerance: float = 0.02,
                     progress: TextIO | None = None) -> float:
    """The highest speed (within ``tolerance``) at which round-robin never has to spill.

    "Near saturation" made precise: any faster and some replica's queue passes its
    saturation point while round-robin keeps sending to it (work spills to ``.any`` or is
    shed). Round-robin's hit rate does not depend on the speed, so neither does the
    answer's meaning; a bisection over replays finds it.
    """
    base = msgspec.structs.replace(config, policy="round-robin")

    def overloaded(speed: float) -> bool:
        result = replay(records, msgspec.structs.replace(base, speed=speed))
        if progress is not None:
            print(f"  calibrating: round-robin at speed {speed:.3f}: {result.via_any} spilled, "
                  f"{result.shed} shed", file=progress, flush=True)
        return result.via_any > 0 or result.shed > 0

    if overloaded(low):
        return low
    while not overloaded(high):
        low, high = high, high * 2
    while high / low > 1 + tolerance:
        middle = (low * high) ** 0.5
        if overloaded(middle):
            high = middle
        else:
            low = middle
    return low


def describe(result: ReplayResult) -> str:
    return (f"{result.policy:<13} routers={result.routers} hit {result.hit_rate:6.2%} "
            f"({result.of_ceiling:6.1%} of ceiling {result.ceiling:.2%})  "
            f"TTFT mean {result.ttft_mean:8.3f}s p50 {result.ttft_p50:7.3f}s p99 {result.ttft_p99:8.3f}s  "
            f"load max/mean {result.load_max_over_mean:5.2f} (assigned {result.assigned_max_over_mean:5.2f})  "
            f"shed {result.shed} any {result.via_any} slots {result.occupancy:.0%}  [{result.wall_seconds:.1f}s]")
