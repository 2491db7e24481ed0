"""Replica choice, pure: the ring, the placement memory, load estimates and the policy."""

from __future__ import annotations

import collections
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from router.context import PrefixMemory
from router.load import ReplicaLoad
from router.placement import PlacementMemory
from router.policy import Policy
from router.registry import ReplicaTable
from router.replicas import (
    BLOCK_TOKENS,
    ReplicaSettings,
    choose_affinity,
    choose_least_loaded,
    choose_round_robin,
    record_placement,
    request_weight,
)
from router.ring import HashRing
from router.rules import DEFAULT_RULES
from subjects.messages import (
    CacheClass,
    Heartbeat,
    PlacementRecord,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
)
from subjects.names import ANY_REPLICA

MODEL = "general"


def ctx(hashes: tuple[int, ...] = (), *, session: int = 0, tokens: int | None = None,
        out: int = 64, seen: int = 0) -> RoutingContext:
    prompt = tokens if tokens is not None else max(len(hashes), 1) * BLOCK_TOKENS
    return RoutingContext(prompt, 0, Structured.NONE, Script.LATIN, SafetyCategory.NONE,
                          session, hashes, seen, 0.0, "", out)


def fleet_of(n: int, capacity: int = 8, **beat: object):
    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    for i in range(n):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=capacity, **beat), 0.0)  # type: ignore[arg-type]
    return table, table.fleet(MODEL)


def chain(*parts: int) -> tuple[int, ...]:
    """Chained prefix hashes of a prompt made of these blocks (as router.context does)."""
    out, h = [], 0
    for p in parts:
        h = hash((h, p)) & 0x7FFFFFFFFFFFFFFF
        out.append(h)
    return tuple(out)


# ---- the ring -----------------------------------------------------------------------------
def test_ring_is_the_same_on_every_router_and_lists_each_replica_once():
    names = [f"r{i}" for i in range(10)]
    a, b = HashRing(names), HashRing(reversed(names))
    for key in (0, 1, 2**40, 2**63 - 1, 12345678901234):
        assert list(a.walk(key)) == list(b.walk(key))
        assert sorted(a.walk(key)) == sorted(names)
        assert a.successors(key, 4) == b.successors(key, 4)
        assert len(set(a.successors(key, 4))) == 4


def test_ring_gives_names_one_character_apart_their_own_points():
    """Short names that differ in their last character ("r30", "r31") once hashed to the
    same points (XXH3 folds the seed into short inputs by XOR): 586 distinct points of
    2,048 at 64 replicas, one replica home to 4x its share of keys and ten to none."""
    names = [f"r{i}" for i in range(64)]
    ring = HashRing(names)
    keys = [random.Random(k).getrandbits(64) for k in range(8000)]
    homes = collections.Counter(ring.home(k) for k in keys)
    assert sorted(homes) == sorted(names)  # every replica is home to some keys
    assert max(homes.values()) < 2.0 * len(keys) / len(names)
    starts = collections.Counter(ring.successors(k, 4)[0] for k in keys)
    assert len(starts) == len(names)


def test_ring_change_moves_only_the_keys_of_the_replica_that_left():
    names = [f"r{i}" for i in range(16)]
    full, less = HashRing(names), HashRing(names[1:])
    keys = [random.Random(k).getrandbits(64) for k in range(2000)]
    moved = [k for k in keys if full.home(k) != less.home(k)]
    assert all(full.home(k) == "r0" for k in moved)  # only r0's keys moved
    share = sum(1 for k in keys if full.home(k) == "r0") / len(keys)
    assert 0.02 < share < 0.13  # about 1/16 of the ring


def test_ring_joins_and_leaves_in_place_give_the_ring_a_fresh_build_gives():
    """Routers that saw replicas join in different orders (or leave and come back) hold
    the same ring, and a slice walked on demand equals the filled table's."""
    names = [f"r{i}" for i in range(24)]
    fresh = HashRing(names).fill(6)
    grown = HashRing()
    shuffled = names[:]
    random.Random(5).shuffle(shuffled)
    for name in shuffled:
        assert grown.add(name)
    assert not grown.add("r3")  # already there
    assert grown.add("gone") and grown.remove("gone") and not grown.remove("gone")
    keys = [random.Random(k).getrandbits(64) for k in range(500)]
    assert not grown.filled
    assert [grown.successors(k, 6) for k in keys] == [fresh.successors(k, 6) for k in keys]
    grown.fill(6)
    assert grown.filled
    assert [grown.successors(k, 6) for k in keys] == [fresh.successors(k, 6) for k in keys]
    # A leave forgets the table; the walks after it never list the replica that left.
    grown.remove("r7")
    assert not grown.filled and grown.size == 23
    assert all("r7" not in grown.successors(k, 6) for k in keys)
    assert [grown.successors(k, 6) for k in keys] == [HashRing(set(names) - {"r7"}).successors(k, 6)
                                                      for k in keys]


def test_a_fleet_ring_follows_membership_without_a_rebuild_on_the_request_path():
    table, fleet = fleet_of(6)
    ring = fleet.ring
    table.refresh()
    assert ring.filled
    table.apply(Heartbeat(model=MODEL, replica="r9", capacity=8), 1.0)
    assert fleet.ring is ring and "r9" in ring and not ring.filled  # updated in place
    table.refresh()
    assert ring.filled
    table.remove(MODEL, "r2")
    assert "r2" not in ring
    for k in range(200):
        assert all(load.name != "r2" for load in ring.successors(k << 50, 8))


def test_least_loaded_follows_every_change_of_load():
    """The fleet's heap answers as a scan of the fleet would, after placements, samples,
    saturation and draining."""
    table, fleet = fleet_of(12, capacity=2)
    rng = random.Random(9)

    def scan() -> str | None:
        open_ = [(load.weight, name) for name, load in fleet.usable.items()
                 if load.requests < load.limit]
        return min(open_)[1] if open_ else None

    for step in range(3000):
        name = f"r{rng.randrange(12)}"
        action = rng.random()
        if action < 0.5:
            fleet.placed(name, rng.randrange(1, 5000))
        elif action < 0.9:
            fleet.sample(name, rng.randrange(0, 6))
        else:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=rng.choice((1, 2, 3)),
                                  draining=rng.random() < 0.3), float(step))
        assert fleet.least_loaded() == scan()
    assert len(fleet._by_load) <= 4 * 12 + 65  # stale entries do not pile up


def test_a_prompt_with_no_block_and_no_session_goes_to_the_least_loaded_replica():
    _, fleet = fleet_of(8)
    for i in range(8):
        fleet.placed(f"r{i}", 1000 + (i * 37) % 8 * 100)
    expected = min((load.weight, name) for name, load in fleet.usable.items())[1]
    assert choose_affinity(ctx((), tokens=100), fleet)[0] == (expected, CacheClass.COLD)


# ---- the placement memory ----------------------------------------------------------------
def test_lookup_finds_the_deepest_placed_prefix_with_or_without_a_hint():
    memory = PlacementMemory()
    first = chain(0, 1, 2, 3)
    memory.record("r1", first)
    later = chain(0, 1, 2, 3, 4, 5)  # the conversation's next turn
    for hint in (0, 1, 4, 6):
        assert memory.lookup(later, hint) == (4, 0, ("r1",))
    assert memory.lookup(chain(9, 9)) == (0, 0, ())
    branch = chain(0, 1, 7)  # shares two blocks, then differs
    assert memory.lookup(branch)[0] == 2


def test_a_prefix_served_by_many_replicas_counts_as_spread_and_prefers_nobody():
    memory = PlacementMemory(fanout=3)
    system = chain(0, 1)
    for i, replica in enumerate(("r1", "r2", "r3")):
        memory.record(replica, chain(0, 1, 100 + i))
    matched, shared, holders = memory.lookup(chain(0, 1, 999))
    assert (matched, shared, holders) == (2, 2, ())
    # A deeper private prefix on top of the spread one keeps its holder, and says how
    # many of its blocks are the spread ones.
    memory.record("r2", chain(0, 1, 50, 51))
    assert memory.lookup(chain(0, 1, 50, 51, 52)) == (4, 2, ("r2",))
    assert memory.holders(system[-1])[0] == "r2"  # most recent first


def test_sessions_and_generations():
    memory = PlacementMemory(capacity=64)
    memory.record("r1", chain(1, 2), session_hash=42)
    assert memory.session(42) == "r1"
    memory.record("r2", chain(3), session_hash=42)
    assert memory.session(42) == "r2"
    for i in range(200):  # several generations later the old entries are gone
        memory.record("r3", chain(1000 + i))
    assert memory.lookup(chain(1, 2)) == (0, 0, ())
    assert len(memory) <= 64


def test_holders_keep_their_order_and_their_bound_in_the_packed_entries():
    memory = PlacementMemory(fanout=4)
    prompt = chain(7, 8)
    for replica in ("a", "b", "c", "b", "d"):
        memory.record(replica, prompt)
    assert memory.holders(prompt[-1]) == ("d", "b", "c", "a")
    memory.record("e", prompt)  # the oldest holder drops off
    assert memory.holders(prompt[-1]) == ("e", "d", "b", "c")
    assert memory.lookup(prompt) == (2, 2, ())  # four holders: spread
    memory.record("d", chain(7, 8, 9))
    assert memory.lookup(chain(7, 8, 9, 10)) == (3, 2, ("d",))


# ---- load estimates ---------------------------------------------------------------------------
def test_load_is_the_newest_placements_still_in_the_queue():
    load = ReplicaLoad(limit=16)
    for weight in (100, 200, 300, 400):
        load.placed(weight)
    assert (load.weight, load.requests) == (1000, 4)
    load.sample(2, fill_weight=50)  # two left: the newest two
    assert (load.weight, load.requests) == (700, 2)
    load.placed(10)
    assert (load.weight, load.requests) == (710, 3)
    load.sample(7, fill_weight=50)  # more than it knows of: the unknown ones at the fill weight
    assert (load.weight, load.requests) == (1010 + 2 * 50, 7)
    load.sample(0, fill_weight=50)
    assert (load.weight, load.requests) == (0, 0)


def test_outstanding_work_is_the_newest_queued_and_the_heavy_ones_still_running():
    """Of four outstanding on a replica running two at once, the two newest are queued;
    the two running are the heaviest just before them (a long answer outlasts short
    ones taken after it), not the next newest."""
    load = ReplicaLoad(limit=16, capacity=2)
    for weight in (100, 9000, 100, 100, 50, 60):
        load.placed(weight)
    load.sample(4, fill_weight=50)
    assert (load.weight, load.requests) == (50 + 60 + 9000 + 100, 4)
    load.placed(300)  # placed since the sample: counted at once
    assert (load.weight, load.requests) == (9510, 5)
    load.sample(1, fill_weight=50)  # one left, running: the heaviest of the last two
    assert load.weight == 300
    load.sample(9, fill_weight=50)  # two more than it knows of: at the fill weight
    assert load.weight == 9710 + 2 * 50


def test_a_sample_prices_the_queued_exactly_and_the_running_as_the_heaviest_before_them():
    """Random histories against the rule written plainly: the newest ``outstanding -
    capacity`` placements are queued, and the running ones are the ``capacity`` heaviest
    of the 1.5 x as many placements just before them."""
    rng = random.Random(5)
    for _ in range(400):
        capacity = rng.randrange(1, 6)
        load = ReplicaLoad(limit=100, capacity=capacity)
        weights = [rng.choice((rng.randrange(1, 1000), 100)) for _ in range(rng.randrange(1, 30))]
        for weight in weights:
            load.placed(weight)
        outstanding = rng.randrange(0, len(weights) + 1)
        load.sample(outstanding, fill_weight=50)
        running = min(outstanding, capacity)
        top = len(weights) - (outstanding - running)  # placements before the queued ones
        span = min(running + (running + 1) // 2, top)
        heaviest = sorted(weights[top - span:top], reverse=True)[:running]
        assert (load.weight, load.requests) == (sum(weights[top:]) + sum(heaviest), outstanding)


# ---- the policy --------------------------------------------------------------------------------
def test_a_session_sticks_to_its_replica():
    _, fleet = fleet_of(8)
    first = choose_affinity(ctx(chain(1, 2), session=77), fleet)[0][0]
    record_placement(fleet, ctx(chain(1, 2), session=77), first)
    fleet.sample(first, 0)  # the first turn was answered
    for prompt in (chain(5, 6, 7), ()):  # prompts that share no hashed block with it
        again = choose_affinity(ctx(prompt, session=77), fleet)
        assert again[0] == (first, CacheClass.SESSION_STICKY)
        assert again[-1] == (ANY_REPLICA, CacheClass.SPILL)
    # A session does not keep a replica far above the others: it moves, then sticks there.
    for other in fleet.usable:
        fleet.sample(other, 0)
    for _ in range(20):
        fleet.placed(first, 10_000)
    moved = choose_affinity(ctx((), session=77), fleet)[0][0]
    assert moved != first
    record_placement(fleet, ctx((), session=77), moved)
    assert fleet.placements.session(session_hash=77) == moved


def test_a_draining_replica_gets_no_sticky_work():
    table, fleet = fleet_of(4)
    prompt = ctx(chain(1, 2, 3), session=5)
    home = choose_affinity(prompt, fleet)[0][0]
    record_placement(fleet, prompt, home)
    fleet.sample(home, 0)  # answered
    assert choose_affinity(ctx(chain(1, 2, 3, 4), session=5), fleet)[0][0] == home
    table.apply(Heartbeat(model=MODEL, replica=home, capacity=8, draining=True), 1.0)
    for c in (ctx(chain(1, 2, 3, 4), session=5), ctx(chain(1, 2, 3, 4))):
        candidates = choose_affinity(c, fleet)
        assert home not in [r for r, _ in candidates]


def test_the_longest_prefix_wins_over_a_shorter_one():
    _, fleet = fleet_of(8)
    fleet.placed("r3", 100, chain(1, 2))
    fleet.placed("r5", 100, chain(1, 2, 3, 4))
    choice = choose_affinity(ctx(chain(1, 2, 3, 4, 9)), fleet)
    assert choice[0] == ("r5", CacheClass.PREFIX_HIT)
    assert choose_affinity(ctx(chain(1, 2, 8)), fleet)[0][0] in ("r3", "r5")


def test_the_floor_and_the_move_allowance_do_not_add_up():
    """In a nearly idle fleet a warm replica may hold the floor's two typical requests, or
    the mean plus what moving its prefix would waste, whichever is more — not both."""
    _, fleet = fleet_of(8, capacity=1000)
    first = ctx(chain(*range(1, 8)), out=64)  # 7 private blocks: 512 tokens past the free 3,072
    record_placement(fleet, first, "r0")
    fill = fleet.fill_weight
    nxt = ctx(chain(*range(1, 9)), out=64)  # the conversation's next turn
    fleet.sample("r0", 1)  # its one request: within the floor, so it stays warm
    assert choose_affinity(nxt, fleet)[0] == ("r0", CacheClass.PREFIX_HIT)
    fleet.sample("r0", 3)  # two more it was not told of: 3 typical requests, over the floor
    assert fleet.load("r0") == 3 * fill > 2 * fill
    allowance = 12 * (7 * BLOCK_TOKENS - 3072)
    assert fleet.load("r0") <= 2 * fill + allowance  # the two stacked would have kept it there
    assert choose_affinity(nxt, fleet)[0][0] != "r0"


def test_saturated_replicas_are_skipped_and_all_saturated_goes_to_any():
    _, fleet = fleet_of(3, capacity=2)  # the table's saturation: 2 × capacity outstanding
    s = ReplicaSettings()
    for replica in ("r0", "r1"):
        fleet.sample(replica, 4)  # 2 × capacity: saturated
    assert choose_affinity(ctx(chain(1)), fleet, s)[0][0] == "r2"
    fleet.sample("r2", 9)
    assert choose_affinity(ctx(chain(1)), fleet, s) == [(ANY_REPLICA, CacheClass.SPILL)]
    assert choose_least_loaded(fleet, s) == [(ANY_REPLICA, CacheClass.SPILL)]
    assert choose_round_robin(fleet, 3, s) == [(ANY_REPLICA, CacheClass.SPILL)]


def test_no_usable_replica_means_no_candidates():
    table, fleet = fleet_of(2)
    assert choose_affinity(ctx(chain(1)), table.fleet("other")) == []
    for i in range(2):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=8, draining=True), 1.0)
    assert choose_affinity(ctx(chain(1)), fleet) == []


def test_a_hot_prefix_spills_and_its_new_holders_are_warm_for_it():
    """Every request shares a system prompt: it must not all land on one replica."""
    _, fleet = fleet_of(8, capacity=1000)  # no load samples here: nothing saturates
    system = (1, 2, 3, 4)
    counts: dict[str, int] = {}
    for i in range(400):
        c = ctx(chain(*system, 1000 + i), tokens=5 * BLOCK_TOKENS, out=64)
        replica = choose_affinity(c, fleet)[0][0]
        record_placement(fleet, c, replica)
        counts[replica] = counts.get(replica, 0) + 1
    assert sorted(counts) == [f"r{i}" for i in range(8)]
    assert max(counts.values()) <= 1.3 * 400 / 8
    matched, shared, _ = fleet.placements.lookup(chain(*system, 5000))
    assert matched == len(system) and shared == len(system)  # spread: warm everywhere


def test_same_view_same_choice_on_every_router():
    """Two routers fed the same heartbeats and placement records choose alike."""
    a, b = Policy(DEFAULT_RULES, PrefixMemory()), Policy(DEFAULT_RULES, PrefixMemory())
    (ta, _), (tb, _) = fleet_of(16), fleet_of(16)
    rng = random.Random(3)
    for i in range(500):
        blocks = [rng.randrange(5)] + [rng.randrange(40) for _ in range(rng.randrange(1, 6))]
        c = ctx(chain(*blocks), session=rng.choice((0, 0, rng.randrange(1, 30))),
                out=rng.randrange(1, 500))
        choice_a = a.choose_replicas(c, MODEL, ta)
        assert choice_a == b.choose_replicas(c, MODEL, tb)
        replica = choice_a[0][0]
        weight = a.placed(c, MODEL, replica, ta)
        record = PlacementRecord("router-a", MODEL, replica, weight, c.session_hash, c.prefix_hashes)
        b.apply_placement(record, tb)
        if i % 50 == 0:  # the same load sample reaches both
            for r in range(16):
                n = rng.randrange(10)
                ta.fleet(MODEL).sample(f"r{r}", n)
                tb.fleet(MODEL).sample(f"r{r}", n)


requests = st.lists(
    st.tuples(
        st.integers(0, 3),  # which shared prefix (0: none)
        st.integers(1, 64),  # prompt blocks
        st.integers(1, 2000),  # output tokens
        st.integers(0, 5),  # session (0: none)
        st.booleans(),  # a load sample arrives before this request
    ),
    min_size=1, max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(requests=requests, replicas=st.integers(1, 12), epsilon=st.sampled_from([0.05, 0.15, 0.5]))
def test_bounded_load_holds_for_every_choice(requests, replicas, epsilon):
    """No replica takes work while above (1 + ε) × the mean load (this request included;
    at least floor_requests typical requests), unless it holds this request's own prefix:
    then by at most move_cost × what it holds past free_move_tokens — over (1 + ε) × the
    mean, not over the floor (the two do not add up)."""
    _, fleet = fleet_of(replicas, capacity=1000)
    s = ReplicaSettings(load_epsilon=epsilon)
    rng = random.Random(len(requests))
    for n, (shared, blocks, out, session, sample) in enumerate(requests):
        if sample:
            for name in fleet.usable:
                fleet.sample(name, rng.randrange(0, fleet.usable[name].requests + 1))
        c = ctx(chain(*([shared] * 3 if shared else []), *range(n * 100, n * 100 + blocks)),
                session=session, out=out)
        matched, common, _ = fleet.placements.lookup(c.prefix_hashes)
        before = {name: load.weight for name, load in fleet.usable.items()}
        mean = (sum(before.values()) + request_weight(c, s, matched)) / len(before)
        replica, _ = choose_affinity(c, fleet, s)[0]
        allowance = s.move_cost * max((matched - common) * BLOCK_TOKENS - s.free_move_tokens, 0)
        allowed = max((1 + epsilon) * mean + allowance, s.floor_requests * fleet.fill_weight)
        assert before[replica] <= allowed + 1e-6
        record_placement(fleet, c, replica, s)
        # The fleet's O(1) aggregates agree with the replicas they summarise.
        assert fleet.usable_weight == sum(load.weight for load in fleet.usable.values())
        assert fleet.open_count == sum(load.open for load in fleet.usable.values())


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 50_000), min_size=10, max_size=300),
       replicas=st.integers(2, 10))
def test_without_the_move_allowance_no_replica_ends_above_the_bound(weights, replicas):
    """New work only, no completions: the final loads stay within (1 + ε) × mean + one request."""
    _, fleet = fleet_of(replicas, capacity=10_000)
    s = ReplicaSettings(load_epsilon=0.15, move_cost=0.0, decode_weight=1.0)
    for i, w in enumerate(weights):
        c = ctx(chain(i), tokens=w, out=0)
        record_placement(fleet, c, choose_affinity(c, fleet, s)[0][0], s)
    loads = [load.weight for load in fleet.usable.values()]
    mean = sum(loads) / len(loads)
    assert max(loads) <= 1.15 * mean + max(weights) + s.default_output_tokens


def test_a_refused_placement_is_taken_back_as_if_never_made():
    load = ReplicaLoad(limit=16)
    for weight in (100, 200, 300):
        load.placed(weight)
    load.sample(2, fill_weight=50)  # 200 and 300 outstanding
    load.placed(400)
    load.placed(500)
    assert load.cancel(400)  # refused: the later placement keeps its place
    assert (load.weight, load.requests) == (1000, 3)
    load.sample(2, fill_weight=50)  # the newest two: 300 and 500
    assert (load.weight, load.requests) == (800, 2)
    assert not load.cancel(999)
    assert load.cancel(100)  # already done: only the history changes
    assert (load.weight, load.requests) == (800, 2)
    load.sample(3, fill_weight=50)
    assert (load.weight, load.requests) == (1000, 3)


def test_a_released_claim_frees_the_replica_it_saturated():
    _, fleet = fleet_of(2, capacity=1)  # saturated at 2 outstanding
    fleet.placed("r0", 100)
    fleet.placed("r0", 150)
    assert fleet.open_count == 1 and fleet.least_loaded() == "r1"
    fleet.unplaced("r0", 150)
    assert fleet.open_count == 2 and fleet.usable_weight == 100 == fleet.load("r0")
    fleet.placed("r1", 500)
    assert fleet.least_loaded() == "r0"


# ---- the fast choice is the plain rules, written for speed -----------------------------------
def reference_choice(c: RoutingContext, fleet, s: ReplicaSettings):
    """router.replicas' rules written plainly (sorted lists, no inlining): choose_affinity
    must give exactly this answer, so a speed-up can never change a choice."""
    usable = fleet.usable
    if not usable:
        return []
    if not fleet.open_count:
        return [(ANY_REPLICA, CacheClass.SPILL)]
    matched, common, holders = fleet.placements.lookup(c.prefix_hashes, c.prefix_seen_depth)
    sticky = fleet.placements.session(c.session_hash) if c.session_hash else None
    uncached = max(c.prompt_tokens - matched * BLOCK_TOKENS, 1)
    output = s.decode_weight * (c.max_tokens or s.default_output_tokens)
    above_mean = (1 + s.load_epsilon) * (fleet.usable_weight + uncached + output) / len(usable)
    bound = max(above_mean, s.floor_requests * fleet.fill_weight)
    warm = ([sticky] if sticky is not None and sticky not in holders else []) + list(holders)
    kept = (matched - common) * BLOCK_TOKENS - s.free_move_tokens
    allowance = max(above_mean + s.move_cost * max(kept, 0), bound)
    ranked = []
    for name in warm:
        load = usable.get(name)
        if load is not None and load.requests < load.limit and load.weight <= allowance:
            ranked.append((uncached + s.load_cost * load.weight, name))
    sticky_fits = any(name == sticky for _, name in ranked)
    hashes = c.prefix_hashes
    key = hashes[min(matched, len(hashes) - 1)] if hashes else c.session_hash
    if key:
        wanted = s.ring_choices
        for load in fleet.ring.successors(key, s.max_walk):
            if (not load.usable or load.requests >= load.limit or load.weight > bound
                    or load.name in warm):
                continue
            ranked.append((c.prompt_tokens - common * BLOCK_TOKENS + s.load_cost * load.weight,
                           load.name))
            wanted -= 1
            if not wanted:
                break
    names = [name for _, name in sorted(ranked)]
    if not names:
        least = fleet.least_loaded()
        if least is None:
            return [(ANY_REPLICA, CacheClass.SPILL)]
        names = [least]
    if sticky_fits and names[0] != sticky:
        first, rest = sticky, [n for n in names[:3] if n != sticky]
    else:
        first, rest = names[0], names[1:3]
    if first == sticky:
        cls = CacheClass.SESSION_STICKY
    elif common or first in holders:
        cls = CacheClass.PREFIX_HIT
    else:
        cls = CacheClass.COLD
    return ([(first, cls)] + [(n, CacheClass.COLD) for n in rest[: s.fallbacks]]
            + [(ANY_REPLICA, CacheClass.SPILL)])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), replicas=st.integers(1, 40), capacity=st.integers(1, 8),
       s=st.builds(ReplicaSettings, load_epsilon=st.sampled_from([0.0, 0.1, 0.3]),
                   fallbacks=st.integers(0, 2),
                   ring_choices=st.integers(1, 5), free_move_tokens=st.sampled_from([0, 3072])))
def test_choose_affinity_gives_exactly_the_plain_rules_answer(seed, replicas, capacity, s):
    table, fleet = fleet_of(replicas, capacity=capacity)
    if seed % 2:
        table.refresh()  # the ring's lookup table filled, or walked on demand
    rng = random.Random(seed)
    for step in range(150):
        blocks = [rng.randrange(3)] + [rng.randrange(30) for _ in range(rng.randrange(0, 6))]
        c = ctx(chain(*blocks) if rng.random() < 0.9 else (),
                session=rng.choice((0, 0, rng.randrange(1, 12))), out=rng.randrange(1, 900),
                tokens=rng.choice((None, 100, 5000)), seen=rng.randrange(0, 4))
        if len(c.prefix_hashes) < c.prefix_seen_depth:
            c = ctx(c.prefix_hashes, session=c.session_hash, out=c.max_tokens)
        got = choose_affinity(c, fleet, s)
        assert got == reference_choice(c, fleet, s)
        if got and got[0][0] != ANY_REPLICA:
            record_placement(fleet, c, got[0][0], s)
        action = rng.random()
        name = f"r{rng.randrange(replicas)}"
        if action < 0.3:
            fleet.sample(name, rng.randrange(0, 2 * capacity + 2))
        elif action < 0.35:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=capacity,
                                  draining=rng.random() < 0.5), float(step))
