"""router/_choice.c gives exactly the Python replica choice (and placement lookup).

The C twin reads the same fleet, placement memory and ring objects as the Python code;
these tests drive both over random fleets and placement histories and compare every
answer. They also check that the twin answered itself (a twin that handed every call to
its Python fallback would agree trivially).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.placement import PlacementMemory
from router.registry import ReplicaTable
from router.replicas import (
    BLOCK_TOKENS,
    DEFAULT_SETTINGS,
    NATIVE_CHOICE,
    ReplicaSettings,
    apply_record,
    choose_affinity,
    choose_affinity_python,
    record_placement,
)
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

pytestmark = pytest.mark.skipif(not NATIVE_CHOICE,
                                reason="router._choice not built, or SLM_PURE_PYTHON=1")

if NATIVE_CHOICE:
    from router import _choice

MODEL = "general"


def ctx(hashes: tuple[int, ...], *, session: int = 0, tokens: int | None = None,
        out: int = 64, seen: int = 0) -> RoutingContext:
    prompt = tokens if tokens is not None else max(len(hashes), 1) * BLOCK_TOKENS
    return RoutingContext(prompt, 0, Structured.NONE, Script.LATIN, SafetyCategory.NONE,
                          session, hashes, seen, 0.0, "", out)


def chain(parts: list[int]) -> tuple[int, ...]:
    """Chained prefix hashes of a prompt made of these blocks (as router.context chains:
    63 bits, what a PlacementRecord carries and the C prefix map holds)."""
    out, h = [], 0
    for p in parts:
        h = hash((h, p)) & 0x7FFFFFFFFFFFFFFF
        out.append(h)
    return tuple(out)


def same_lookup(fleet, c: RoutingContext) -> tuple:
    memory = fleet.placements
    want = memory.find(c.prefix_hashes, c.prefix_seen_depth, c.session_hash)
    got = _choice.find(memory, c.prefix_hashes, c.prefix_seen_depth, c.session_hash)
    assert got == want
    return want


def same_choice(c: RoutingContext, fleet, s: ReplicaSettings) -> list:
    want = choose_affinity_python(c, fleet, s)
    got = _choice.choose_affinity(c, fleet, s)
    assert got == want
    return got


knobs = st.builds(
    ReplicaSettings,
    load_epsilon=st.sampled_from([0.0, 0.1, 0.3, 1e-9]),
    move_cost=st.sampled_from([0.0, 12.0, 0.5]),
    free_move_tokens=st.sampled_from([0, 3072, 100_000]),
    floor_requests=st.sampled_from([0.0, 2.0, 0.5]),
    # ints where floats are declared: Python's int arithmetic must be mirrored too
    decode_weight=st.sampled_from([32.0, 1.0, 7.5, 32]),
    load_cost=st.sampled_from([0.01, 0.0, 1.0, 1e-7, 1]),
    default_output_tokens=st.sampled_from([256, 1]),
    ring_choices=st.integers(0, 6),
    max_walk=st.integers(1, 12),
    fallbacks=st.integers(0, 3),
)
fleet_sizes = st.one_of(st.integers(1, 12), st.integers(13, 80), st.sampled_from([257, 1024, 1100]))


@settings(max_examples=70, deadline=None)
@given(seed=st.integers(0, 2**32), replicas=fleet_sizes, capacity=st.integers(1, 8),
       placement_capacity=st.sampled_from([8, 64, 1 << 20]), fanout=st.integers(1, 5),
       fill_ring=st.booleans(), s=knobs)
def test_the_c_choice_is_the_python_choice(seed, replicas, capacity, placement_capacity,
                                          fanout, fill_ring, s):
    rng = random.Random(seed)
    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False, fanout=fanout,
                         placement_capacity=placement_capacity)
    names = [f"r{i}" for i in range(replicas)]
    for name in names:
        table.apply(Heartbeat(model=MODEL, replica=name, capacity=rng.randint(1, capacity)), 0.0)
    fleet = table.fleet(MODEL)
    if fill_ring:
        table.refresh(s.max_walk)  # the ring's lookup table filled, or walked on demand
    # A few conversations that grow turn by turn, one shared system prompt, fresh prompts.
    conversations = [[rng.randrange(3)] for _ in range(rng.randint(1, 12))]
    system = [7, 7, 7]
    fallbacks_before = _choice.fallback_count()
    flat = isinstance(fleet.placements._prefixes, _choice.PrefixMap)  # fanout <= 4
    steps = 150 if replicas <= 80 else 40
    for step in range(steps):
        kind = rng.random()
        if kind < 0.5:
            parts = rng.choice(conversations)
            parts += [rng.randrange(40) for _ in range(rng.randrange(0, 4))]
            if len(parts) > 64:
                del parts[64:]
        elif kind < 0.7:
            parts = system + [rng.randrange(100) for _ in range(rng.randrange(0, 3))]
        elif kind < 0.9:
            parts = [rng.randrange(1000) for _ in range(rng.randrange(0, 70))]
        else:
            parts = []
        hashes = chain(parts)
        bad = bool(hashes) and rng.random() < 0.05
        if bad:  # keys no router makes: looked up in either memory, held by dicts alone
            hashes = (*hashes[:-1], rng.choice([-5, 2**63, 2**64 + 3, 2**90]))
        c = ctx(hashes, session=rng.choice((0, 0, rng.randrange(1, 30))),
                tokens=rng.choice((None, 1, 100, 5000, 40_000)), out=rng.choice((0, 1, 64, 900)),
                seen=rng.randrange(0, len(hashes) + 3))
        same_lookup(fleet, c)
        got = same_choice(c, fleet, s)
        if bad and flat:  # the map refuses to record them (a ValueError naming the key)
            if got and got[0][0] != ANY_REPLICA:
                with pytest.raises(ValueError, match="not an int in"):
                    record_placement(fleet, c, got[0][0], s)
                fallbacks_before += 1  # the C record hands the refusal to the Python method
            continue
        # Then change the world: a placement, another router's record, a load sample,
        # a drain, a death or a newcomer.
        if got and got[0][0] != ANY_REPLICA:
            record_placement(fleet, c, got[0][0], s)
        action = rng.random()
        name = rng.choice(names)
        if action < 0.15:
            apply_record(fleet, PlacementRecord(router="other", model=MODEL, replica=name, weight=rng.randrange(1, 9000),
                                                prefix_hashes=hashes, session_hash=c.session_hash))
        elif action < 0.2:
            for holder in rng.sample(names, min(len(names), fanout + 1)):  # spread fleet-wide
                fleet.placed(holder, 100, chain(system), 0)
        elif action < 0.45:
            fleet.sample(name, rng.randrange(0, 2 * capacity + 3))
        elif action < 0.5:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=capacity,
                                  draining=rng.random() < 0.5), float(step))
        elif action < 0.52:
            table.remove(MODEL, name)
        elif action < 0.54:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=capacity), float(step))
        elif action < 0.56:
            fleet.placed(f"ghost{step}", 50, hashes, c.session_hash)  # no heartbeat yet
        if rng.random() < 0.05 and fill_ring:
            table.refresh(s.max_walk)
    # The C code answered: only the knobs it does not mirror are handed to Python.
    assert _choice.fallback_count() == fallbacks_before


def test_the_twin_is_what_the_router_calls_and_reads_slots_at_their_offsets():
    assert choose_affinity is _choice.choose_affinity
    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    for i in range(4):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=2), 0.0)
    fleet = table.fleet(MODEL)
    c = ctx(chain([1, 2, 3]), session=9)
    first = choose_affinity(c, fleet)
    record_placement(fleet, c, first[0][0])
    again = choose_affinity(c, fleet)
    assert again[0] == (first[0][0], CacheClass.SESSION_STICKY)
    assert choose_affinity(c, fleet, settings=DEFAULT_SETTINGS) == again
    fast = _choice.fast_fields()
    assert all(fast[f"ReplicaLoad.{f}"] for f in ("weight", "requests", "limit", "name", "usable"))
    assert fast["RoutingContext.prefix_hashes"]
    # The memory's maps are C (PrefixMap) here: read through its slots, no dict generation.
    assert fast["PlacementMemory._prefixes"] and fast["PlacementMemory._sessions"]


def test_bad_arguments_get_a_type_error_naming_the_signature():
    table = ReplicaTable(ttl=10.0)
    fleet = table.fleet(MODEL)
    with pytest.raises(TypeError, match="choose_affinity"):
        _choice.choose_affinity(ctx(()))
    with pytest.raises(TypeError, match="unexpected keyword argument 'knobs'"):
        _choice.choose_affinity(ctx(()), fleet, knobs=DEFAULT_SETTINGS)
    with pytest.raises(TypeError, match="find"):
        _choice.find(fleet.placements)


def test_inputs_the_twin_does_not_mirror_go_to_the_python_reference():
    """Token counts past the twin's exact range, a holder list wider than it decodes,
    settings that are not a ReplicaSettings: the Python code answers (or raises)."""
    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False, fanout=30)
    for i in range(40):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=4), 0.0)
    fleet = table.fleet(MODEL)
    hashes = chain([1, 2, 3, 4])
    for i in range(31):  # 30 holders of 20 bits: 600 bits, wider than the twin's 512
        fleet.placed(f"r{i}", 10, hashes, 0)
    c = ctx(hashes, seen=4)
    before = _choice.fallback_count()
    assert _choice.find(fleet.placements, hashes, 4, 0) == fleet.placements.find(hashes, 4, 0)
    assert _choice.fallback_count() == before + 1
    huge = ReplicaSettings(free_move_tokens=2**41)
    assert _choice.choose_affinity(c, fleet, huge) == choose_affinity_python(c, fleet, huge)
    assert _choice.fallback_count() == before + 2

    class NotSettings:
        load_epsilon = 0.1

    with pytest.raises(AttributeError):
        choose_affinity_python(ctx(chain([5])), fleet, NotSettings())  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        _choice.choose_affinity(ctx(chain([5])), fleet, NotSettings())


def test_find_matches_on_memories_that_forgot_a_generation_in_the_middle_of_a_prompt():
    """A small memory rolls over while a long prompt is recorded: shallow depths retire
    while deep ones stay, so the placed depths are not a prefix any more; the binary
    search gives one answer for that state, and both codes must give the same one."""
    rng = random.Random(3)
    for capacity in (4, 6, 10, 32):
        memory = PlacementMemory(capacity=capacity, fanout=3)
        for _ in range(200):
            hashes = chain([rng.randrange(4) for _ in range(rng.randrange(1, 12))])
            memory.record(f"r{rng.randrange(6)}", hashes, rng.choice((0, rng.randrange(1, 5))))
            probe = chain([rng.randrange(4) for _ in range(rng.randrange(0, 12))])
            for hint in (0, 1, len(probe), len(probe) + 1, rng.randrange(0, 13)):
                session = rng.randrange(0, 5)
                assert _choice.find(memory, probe, hint, session) == memory.find(probe, hint, session)


def test_a_load_is_a_cell_that_gives_back_what_python_set_and_odd_values_go_to_the_python():
    """ReplicaLoad's weight, requests, limit, usable and name live in the C LoadCell: the
    Python reads back the very objects it wrote; a number the twin cannot read exactly
    (past 2**53, not a number) sends the choice to the Python reference, which agrees."""
    from router.load import ReplicaLoad

    assert isinstance(ReplicaLoad(), _choice.LoadCell)
    load = ReplicaLoad(limit=4.0, name="r0")
    big, odd = 2**70, 12.5
    load.weight, load.requests, load.limit = big, 3, odd
    assert load.weight is big and load.requests == 3 and load.limit is odd
    assert load.open is True  # the cell's getter: requests < limit, exactly as Python compares
    load.requests, load.limit = 2**70 + 1, 2**70  # past 2**53: compared as the ints
    assert load.open is False
    load.limit = 2**70 + 2
    assert load.open is True
    del load.weight
    with pytest.raises(AttributeError, match="weight"):
        load.weight  # noqa: B018 (unset, as a slot would be)
    with pytest.raises(AttributeError, match="weight"):
        del load.weight

    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    for i in range(6):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=4), 0.0)
    fleet = table.fleet(MODEL)
    table.refresh()
    c = ctx(chain([1, 2]))
    before = _choice.fallback_count()
    assert _choice.choose_affinity(c, fleet, DEFAULT_SETTINGS) == choose_affinity_python(c, fleet, DEFAULT_SETTINGS)
    assert _choice.fallback_count() == before  # plain loads: the twin answered
    for load in fleet.usable.values():
        load.weight = 2**60  # past 2**53: not exact as a double
    assert _choice.choose_affinity(c, fleet, DEFAULT_SETTINGS) == choose_affinity_python(c, fleet, DEFAULT_SETTINGS)
    assert _choice.fallback_count() > before


def test_a_load_subclass_that_redefines_an_attribute_is_read_through_it():
    """The twin reads the cell directly only while the five attributes are the cell's own:
    a subclass whose ``weight`` is a property is read through the property, as Python does."""
    from router.load import ReplicaLoad

    class Heavier(ReplicaLoad):
        __slots__ = ()

        @property
        def weight(self) -> int:  # type: ignore[override]
            return 10**6 if self.name == "r1" else 0

        @weight.setter
        def weight(self, value: int) -> None:
            _choice.LoadCell.weight.__set__(self, value)  # the cell holds 0 for every replica

    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    for i in range(3):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=4), 0.0)
    fleet = table.fleet(MODEL)
    for name, state in fleet.members.items():
        swapped = Heavier(limit=state.load.limit, name=name, capacity=4)
        state.load = fleet.usable[name] = swapped
    table.refresh()
    for key in range(1, 40):
        c = ctx(chain([key]))
        want = choose_affinity_python(c, fleet, DEFAULT_SETTINGS)
        assert _choice.choose_affinity(c, fleet, DEFAULT_SETTINGS) == want
        assert want[0][0] != "r1"  # far past the bound, by its property (by its cell it is idle)


def test_the_least_loaded_read_in_c_is_the_methods_answer():
    """A prompt with no key goes to Fleet.least_loaded; the twin reads its answer (the top
    of the fleet's LoadOrder) itself, and calls the method otherwise: a fleet whose order
    is the Python HeapOrder, and a fleet type whose least_loaded is another function."""
    from router.order import HeapOrder
    from router.registry import Fleet

    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    for i in range(5):
        table.apply(Heartbeat(model=MODEL, replica=f"r{i}", capacity=2), 0.0)
    fleet = table.fleet(MODEL)
    keyless = ctx(())
    for step in range(12):  # placements move the least loaded replica around
        got = _choice.choose_affinity(keyless, fleet, DEFAULT_SETTINGS)
        assert got == choose_affinity_python(keyless, fleet, DEFAULT_SETTINGS)
        assert got[0][0] == fleet.least_loaded()
        fleet.placed(got[0][0], 100 + step)
    top = fleet.least_loaded()
    table.remove(MODEL, top)  # the order's top leaves
    got = _choice.choose_affinity(keyless, fleet, DEFAULT_SETTINGS)
    assert got[0][0] != top and got[0][0] in fleet.usable
    assert got == choose_affinity_python(keyless, fleet, DEFAULT_SETTINGS)
    top = fleet.least_loaded()
    for _ in range(4):  # up to its limit (2 x capacity 2): saturated, out of the order
        fleet.placed(top, 1)
    got = _choice.choose_affinity(keyless, fleet, DEFAULT_SETTINGS)
    assert got[0][0] != top
    assert got == choose_affinity_python(keyless, fleet, DEFAULT_SETTINGS)

    reference = Fleet(MODEL)
    reference._by_load = HeapOrder(reference.usable)
    for i in range(5):
        reference.beat(Heartbeat(model=MODEL, replica=f"r{i}", capacity=2), 0.0)
        reference.placed(f"r{i}", 50 - i)
    assert _choice.choose_affinity(keyless, reference, DEFAULT_SETTINGS)[0][0] == "r4"

    class Pinned(Fleet):
        __slots__ = ()

        def least_loaded(self) -> str | None:
            return "r4" if "r4" in self.usable else super().least_loaded()

    pinned = Pinned(MODEL)
    for i in range(5):
        pinned.beat(Heartbeat(model=MODEL, replica=f"r{i}", capacity=2), 0.0)
    assert Fleet.least_loaded(pinned) != "r4"
    assert _choice.choose_affinity(keyless, pinned, DEFAULT_SETTINGS)[0][0] == "r4"
