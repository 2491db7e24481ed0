"""router/_choice.c's record leaves exactly the memory PlacementMemory.record leaves.

The claim (Policy.placed) records every request's prefixes before the publish; in the
router that is the C twin (router.placement.record). These tests run the same histories
into two memories, one updated by the Python method (the reference) and one by the twin,
and compare everything the memory holds after every step: both generations of prefixes
and sessions in their insertion order (a later popitem of the retiring one depends on
it), the replica ids and names. Then whole fleets, through the router's own entry points
(record_placement, apply_record), with replica choice compared on the two.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import router.registry
from router import placement
from router.placement import ID_BITS, SHARDS, PlacementMemory
from router.registry import ReplicaTable
from router.replicas import (
    BLOCK_TOKENS,
    apply_record,
    choose_affinity,
    choose_affinity_python,
    held_depth,
    record_placement,
)
from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import (
    Heartbeat,
    PlacementRecord,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
)

pytestmark = pytest.mark.skipif(not placement.NATIVE_RECORD,
                                reason="router._choice not built, or SLM_PURE_PYTHON=1")

if placement.NATIVE_RECORD:
    from router import _choice

MODEL = "general"
# Replica names a record from the wire may carry: any string.
NAMES = ["r0", "r1", "r2", "", "général-7", "0", "r0 ", "x" * 300, "\x00", "general.any.not"]


def state(memory: PlacementMemory) -> tuple:
    def gens(g):
        if isinstance(g, _choice.PrefixMap):  # the C map: what each generation holds
            return g.generations(), len(g)
        def shards(generation):  # each shard's entries in its insertion order
            return [list(shard.items()) for shard in generation]
        return (shards(g.new), shards(g.old), shards(g._retiring), g._size, g._retiring_at, g._capacity)
    # Not _decoded: that is the Python find's cache of decoded holder lists (the C find
    # decodes its own); record only clears it, in the reset checked below.
    return (gens(memory._prefixes), gens(memory._sessions), list(memory._ids.items()),
            list(memory._names), memory._fanout)


def chain(parts: list[int]) -> tuple[int, ...]:
    """Chained prefix hashes of these blocks, 63 bits as on the wire (records are decoded
    here too, and refuse wider hashes; test_choice_twin's chain keeps 64)."""
    out, h = [], 0
    for p in parts:
        h = hash((h, p)) & 0x7FFFFFFFFFFFFFFF
        out.append(h)
    return tuple(out)


# A prompt: chained hashes of a few shared documents (so prefixes repeat and spread),
# fresh ones, raw ints with repeats inside one list, keys no router makes (negative, past
# 64 bits: the memory is a plain dict and takes them).
prompts = st.one_of(
    st.builds(lambda doc, length: chain([doc % 3] * 2 + list(range(doc, doc + length))),
              st.integers(0, 5), st.integers(0, 68)),
    st.lists(st.integers(0, 12), min_size=1, max_size=70).map(chain),
    st.lists(st.integers(0, 40), max_size=70).map(tuple),
    st.lists(st.sampled_from([-5, 0, 1, 2**63 - 1, 2**64 + 3, 2**90]), max_size=5).map(tuple),
)
records = st.tuples(st.sampled_from(NAMES), prompts,
                    st.sampled_from([0, 0, 1, 2, 3, 2**63 - 1, 2**70]), st.booleans())


def outcome(call, *args) -> str | None:
    """The exception a call raised (its type and message), or None."""
    try:
        call(*args)
    except (TypeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def is_key(h) -> bool:
    """A key the C prefix map holds: an int in [0, 2**63), as a prefix hash is."""
    return isinstance(h, int) and 0 <= h < 2**63


@settings(max_examples=160, deadline=None)
@given(capacity=st.integers(1, 40), fanout=st.integers(1, 6),
       steps=st.lists(records, min_size=1, max_size=40))
def test_the_c_record_leaves_the_memory_the_python_record_leaves(capacity, fanout, steps):
    """Fanout 4 or less: a PrefixMap of prefixes, which refuses keys outside 63 bits (the
    twin hands such a call to the Python method, before any change, and both raise the
    same); more: the dict generations, which take any int. Sessions: a PrefixMap of
    replica ids at every fanout, refusing session hashes outside 63 bits the same way."""
    reference = PlacementMemory(capacity, fanout)
    twin = PlacementMemory(capacity, fanout)
    flat = isinstance(twin._prefixes, _choice.PrefixMap)
    assert flat == (fanout <= 4)
    before, handed_over = _choice.fallback_count(), 0
    for replica, hashes, session, as_list in steps:
        given_hashes = list(hashes) if as_list else hashes
        refused = (flat and not all(map(is_key, hashes))) or (session and not is_key(session))
        handed_over += refused
        expected = outcome(PlacementMemory.record, reference, replica, given_hashes, session)
        assert outcome(_choice.record, twin, replica, given_hashes, session) == expected
        assert (expected is not None) == refused
        assert state(twin) == state(reference)
        probe = hashes[: len(hashes) // 2 + 1] if hashes else ()
        for hint in (0, len(probe)):
            assert _choice.find(twin, probe, hint, session) == reference.find(probe, hint, session)
    assert _choice.fallback_count() == before + handed_over  # the twin made every other change itself


def test_the_router_calls_the_twin():
    assert placement.record is _choice.record
    assert router.registry.record is _choice.record


@contextlib.contextmanager
def python_record():
    """Fleet.placed with the Python method (the module-level switch, for one fleet)."""
    router.registry.record = PlacementMemory.record
    try:
        yield
    finally:
        router.registry.record = _choice.record


def ctx(hashes: tuple[int, ...], session: int, seen: int) -> RoutingContext:
    return RoutingContext(max(len(hashes), 1) * BLOCK_TOKENS, 0, Structured.NONE, Script.LATIN,
                          SafetyCategory.NONE, session, hashes, seen, 0.0, "", 64)


def fleet_state(fleet) -> tuple:
    loads = sorted((n, s.load.weight, s.load.requests) for n, s in fleet.members.items())
    return state(fleet.placements), loads, fleet.usable_weight, fleet.open_count, fleet.fill_weight


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), replicas=st.sampled_from([1, 4, 9, 70]),
       capacity=st.sampled_from([2, 8, 33, 1 << 20]), fanout=st.integers(1, 6))
def test_claims_and_records_leave_the_same_fleet_and_the_same_choices(seed, replicas, capacity, fanout):
    rng = random.Random(seed)
    tables = [ReplicaTable(ttl=10.0, load_from_heartbeats=False, fanout=fanout,
                           placement_capacity=capacity) for _ in range(2)]
    names = [f"r{i}" for i in range(replicas)]
    for table in tables:
        for name in names:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=2), 0.0)
    reference, twin = (t.fleet(MODEL) for t in tables)
    conversations = [[rng.randrange(3)] for _ in range(6)]
    before = _choice.fallback_count()
    for _ in range(60):
        parts = rng.choice(conversations)
        parts += [rng.randrange(50) for _ in range(rng.randrange(0, 6))]
        del parts[70:]
        hashes = chain(parts if rng.random() < 0.8 else [rng.randrange(9) for _ in range(rng.randrange(0, 70))])
        c = ctx(hashes, rng.choice((0, rng.randrange(1, 9))), rng.randrange(0, len(hashes) + 2))
        want = choose_affinity_python(c, reference)
        assert choose_affinity(c, twin) == want
        replica = want[0][0] if want else rng.choice(names)
        assert held_depth(c, twin, replica) == held_depth(c, reference, replica)
        with python_record():
            weight = record_placement(reference, c, replica)
        assert record_placement(twin, c, replica) == weight
        assert fleet_state(twin) == fleet_state(reference)
        if rng.random() < 0.3:  # another router's record, from the wire
            record = codec.decode_placement(codec.encode_placement(PlacementRecord(
                "other", MODEL, rng.choice(NAMES + names), rng.randrange(1, 5000),
                c.session_hash, hashes)))
            with python_record():
                apply_record(reference, record)
            apply_record(twin, record)
            assert fleet_state(twin) == fleet_state(reference)
    assert _choice.fallback_count() == before


def test_a_record_with_a_hash_outside_63_bits_is_refused_at_decode():
    """The wire's part of the contract: what reaches record holds 0 <= h < 2**63."""
    for bad in (-1, 2**63):
        raw = codec.encode_placement(PlacementRecord("other", MODEL, "r0", 10, 0, (5, bad)))
        with pytest.raises(BadMessage):
            codec.decode_placement(raw)


def test_inputs_the_twin_does_not_mirror_go_to_the_python_method():
    """Hashes that are not ints, a sequence that is neither tuple nor list, a memory of
    another type, a spread count past 128 bits: the Python method runs, and a later C
    record over entries that wide takes Python's own `entry & mask` for them."""
    reference, twin = PlacementMemory(1 << 10, 6), PlacementMemory(1 << 10, 6)
    before = _choice.fallback_count()
    long_prompt = chain(list(range(300)))  # fanout 6: 120 holder bits, 300 > 2**8 blocks
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        PlacementMemory.record(reference, name, long_prompt)
        _choice.record(twin, name, long_prompt)
    assert _choice.fallback_count() == before + 7
    assert any(twin._prefixes.get(h).bit_length() > 128 for h in long_prompt[250:])
    for hashes, session in ((long_prompt[250:], 4), (("text", 1.5), 0), (range(3), 0),
                            ((1, 2), True)):
        PlacementMemory.record(reference, "h", hashes, session)
        _choice.record(twin, "h", hashes, session)
        assert state(twin) == state(reference)
    assert _choice.fallback_count() == before + 10  # the 50 deep blocks were the twin's own

    class Memory(PlacementMemory):
        __slots__ = ()

    other = Memory(8, 2)
    _choice.record(other, "a", (1, 2), 3)
    assert other.holders(2) == ("a",) and other.session(3) == "a"
    with pytest.raises(TypeError, match="record"):
        _choice.record(twin, "a")
    with pytest.raises(TypeError):
        _choice.record(twin, ["unhashable"], (1,), 0)  # as the method raises it
    with pytest.raises(TypeError):
        PlacementMemory.record(reference, ["unhashable"], (1,), 0)
    assert state(twin) == state(reference)


def test_the_reset_after_a_million_replica_names_is_the_same():
    """The id table starts over past 2**ID_BITS - 1 names (Python's _id, called by the
    twin for a name it has not seen): both memories forget the same way."""
    reference, twin = PlacementMemory(64, 4), PlacementMemory(64, 4)
    for memory in (reference, twin):
        PlacementMemory.record(memory, "old", chain([1, 2]), 5)
        memory._names.extend(["pad"] * ((1 << ID_BITS) - 1 - len(memory._names)))
        assert memory.holders(chain([1, 2])[1]) == ("old",)  # a decoded list, to be forgotten
    for name in ("last", "first-after-reset", "old"):
        PlacementMemory.record(reference, name, chain([1, 2, 3]), 6)
        _choice.record(twin, name, chain([1, 2, 3]), 6)
        assert state(twin) == state(reference)
        assert twin._decoded == reference._decoded
    assert twin._names == ["", "first-after-reset", "old"] and not twin._decoded
    # Sessions hold replica ids, so the reset forgets them too: session 5's id (1, "old"
    # before the reset) would now name "first-after-reset".
    for memory in (reference, twin):
        assert memory.session(5) is None and memory.session(6) == "old"
        assert _choice.find(memory, (), 0, 5)[3] is None


def test_no_dict_of_a_generation_holds_more_than_a_share_of_it():
    """A dict generation (fanout past 4 here, every fanout in pure Python) is SHARDS dicts
    picked by a key's hash, so a dict's doubling copies a 1/SHARDS share of the generation
    (one dict of up to 512k entries took 29 ms to double at 350k), and len() still counts
    every remembered hash; both ways of recording."""
    capacity = 1 << 14
    for record in (PlacementMemory.record, _choice.record):
        memory = PlacementMemory(capacity, 5)
        rng = random.Random(3)
        for i in range(3000):
            record(memory, f"r{i % 7}", tuple(rng.getrandbits(63) for _ in range(4)), rng.getrandbits(63))
        prefixes = memory._prefixes
        assert len(prefixes.new) == len(prefixes.old) == SHARDS
        assert len(prefixes.old[0]) and len(prefixes.new[0])  # rolled over once, filling again
        assert max(map(len, prefixes.new + prefixes.old)) < 2 * (capacity // 2) // SHARDS
        assert len(memory) == prefixes._size + sum(map(len, prefixes.old))
        assert prefixes._size == sum(map(len, prefixes.new))
