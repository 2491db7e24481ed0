"""router._choice.PrefixMap answers exactly as router.placement._TwoGenerations does.

The placement memory's prefix map is the C map where router._choice is built (fanout 4 or
less) and the dict generations elsewhere; these tests drive both with the same random
calls and compare every answer and what each generation holds after every call, through
many turn overs (small capacities), then the map's own refusals.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import placement
from router.placement import PlacementMemory, _TwoGenerations

pytestmark = pytest.mark.skipif(placement._PrefixMap is None,
                                reason="router._choice not built, or SLM_PURE_PYTHON=1")

if placement._PrefixMap is not None:
    from router._choice import PrefixMap

KEYS = [0, 1, 2, 3, 5, 8, 13, 2**32, 2**62, 2**63 - 1, *range(100, 140)]
VALUES = [0, 1, 2**20 - 1, 2**64 - 1, 2**64, 2**100 + 7, 2**128 - 1]
NOT_KEYS = [-1, 2**63, 2**64, 2**90, "7", 1.0, None]
NOT_VALUES = [(-1, ValueError), (2**128, ValueError), ("5", TypeError), (2.5, TypeError)]


def held(generations) -> dict:
    """A _TwoGenerations generation (its shards) as one dict."""
    out: dict = {}
    for shard in generations:
        out.update(shard)
    return out


def same(flat, reference) -> None:
    newer, older = flat.generations()
    assert newer == held(reference.new)
    assert older == held(reference.old)
    assert len(flat) == len(reference)
    for key in KEYS + NOT_KEYS[:4]:
        assert flat.get(key) == reference.get(key)
        assert (key in flat) == (key in reference)
        assert flat.in_newer(key) == reference.in_newer(key)


# Puts of keys that repeat (so entries move between generations) and of any key; now and
# then a clear (turn overs matter more).
calls = st.tuples(
    st.sampled_from(["put"] * 15 + ["clear"]),
    st.one_of(st.sampled_from(KEYS), st.integers(0, 2**63 - 1)),
    st.one_of(st.sampled_from(VALUES), st.integers(0, 2**128 - 1)),
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.one_of(st.integers(-3, 40), st.just(1 << 20)),
       steps=st.lists(calls, max_size=150))
def test_the_map_answers_as_the_dict_generations(capacity, steps):
    flat, reference = PrefixMap(capacity), _TwoGenerations(capacity)
    same(flat, reference)
    for call, key, value in steps:
        if call == "put":
            flat.put(key, value)
            reference.put(key, value)
        else:
            flat.clear()
            reference.clear()
        same(flat, reference)


def test_a_generation_turns_over_at_half_the_capacity_and_the_older_one_is_forgotten():
    flat = PrefixMap(8)  # generations of 4 keys
    for key in range(4):
        flat.put(key, key * 10)
    assert flat.generations() == ({}, {0: 0, 1: 10, 2: 20, 3: 30})  # the fourth turned it over
    flat.put(1, 11)  # in the older one: written to the newer, counted there
    assert flat.get(1) == 11 and flat.in_newer(1) and len(flat) == 5
    for key in range(4, 7):
        flat.put(key, key)
    assert flat.generations() == ({}, {1: 11, 4: 4, 5: 5, 6: 6})
    assert flat.get(0) is None and 0 not in flat and len(flat) == 4


def test_a_forgotten_generation_leaves_nothing_behind_through_many_turn_overs():
    """The forgotten array is zeroed a few slots an insert, then written again as the
    newer one: no key of a generation two turn overs back may answer."""
    flat = PrefixMap(64)
    for key in range(10_000):
        flat.put(key, key + 1)
        if key % 97 == 0:
            newer, older = flat.generations()
            assert set(newer) | set(older) == {k for k in range(key + 1) if flat.get(k) is not None}
            assert all(k > key - 64 for k in set(newer) | set(older))  # two generations of 32
    assert len(flat) == 32 + 16  # 10,000 = 312 x 32 + 16: a full older and 16 newer


def test_the_map_refuses_what_it_cannot_hold_and_changes_nothing():
    flat = PrefixMap(16)
    flat.put(1, 2)
    before = flat.generations()
    for key in NOT_KEYS:
        with pytest.raises(ValueError, match=r"not an int in \[0, 2\*\*63\)"):
            flat.put(key, 1)
        assert flat.get(key) is None and key not in flat and not flat.in_newer(key)
    for value, error in NOT_VALUES:
        with pytest.raises(error, match="value"):
            flat.put(3, value)
    assert flat.generations() == before and len(flat) == 1
    with pytest.raises(TypeError):
        flat.put(1)
    with pytest.raises(TypeError, match="capacity is a str"):
        PrefixMap("8")
    with pytest.raises(ValueError, match="at most 2\\*\\*32"):
        PrefixMap(2**40)
    unready = PrefixMap.__new__(PrefixMap)
    with pytest.raises(ValueError, match="__init__ was not called"):
        unready.get(1)
    with pytest.raises(ValueError, match="__init__ was not called"):
        len(unready) if 1 in unready else None


def test_the_placement_memory_holds_its_prefixes_in_the_map_up_to_fanout_4():
    for fanout, kind in ((1, PrefixMap), (4, PrefixMap), (5, _TwoGenerations), (30, _TwoGenerations)):
        assert type(PlacementMemory(64, fanout)._prefixes) is kind
    memory = PlacementMemory(64, 4)
    for replica in ("a", "b", "c", "d", "e"):  # a full holder list: spread fleet-wide
        memory.record(replica, (11, 12), 5)
    assert memory.find((11, 12), 2, 5) == (2, 2, (), "e")
    assert memory.holders(12) == ("e", "d", "c", "b")
