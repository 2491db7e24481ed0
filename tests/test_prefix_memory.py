"""The repeatedPrefix memory: router/_prefix.c must answer exactly as router/context.py's
PythonPrefixMemory, its reference.

The behaviour tests run on every implementation there is here (the C twin only when it is
built and SLM_PURE_PYTHON is not 1); the property drives the twin and the reference with
the same random calls and compares every answer and both generations after each call.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router import context
from router.context import MAX_PREFIX_BLOCKS, PrefixMemory, PythonPrefixMemory

try:
    if context.PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._prefix import PrefixMemory as NativePrefixMemory
except ImportError:  # not built (no C compiler at install), or switched off
    NativePrefixMemory = None

native_only = pytest.mark.skipif(NativePrefixMemory is None,
                                 reason="router._prefix not built, or SLM_PURE_PYTHON=1")
IMPLEMENTATIONS = [PythonPrefixMemory] + ([NativePrefixMemory] if NativePrefixMemory is not None else [])
each_implementation = pytest.mark.parametrize("memory_class", IMPLEMENTATIONS,
                                              ids=lambda c: "python" if c is PythonPrefixMemory else "c")

TOP = (1 << 63) - 1  # the largest 63-bit hash


@native_only
def test_the_router_uses_the_c_twin_when_it_is_built() -> None:
    assert PrefixMemory is NativePrefixMemory


# ---- the same answers ------------------------------------------------------------------------

# A small pool, so calls repeat hashes and small capacities roll over often; 0 and the
# largest hash are keys like any other (the C stores hash + 1 and keeps 0 for empty).
POOL = [0, 1, 2, 3, 5, 8, 13, 64, 65, 1 << 32, TOP - 1, TOP, 0x5DEECE66D, 0x123456789ABCDEF]
calls = st.lists(st.tuples(st.sampled_from(["see", "remember", "seen_depth"]),
                           st.lists(st.sampled_from(POOL), max_size=12).map(tuple)),
                 max_size=40)


@native_only
@given(st.integers(0, 17), calls)
def test_the_c_twin_answers_as_the_python_reference(capacity: int, steps: list[tuple[str, tuple[int, ...]]]) -> None:
    twin, reference = NativePrefixMemory(capacity), PythonPrefixMemory(capacity)
    for method, hashes in steps:
        assert getattr(twin, method)(hashes) == getattr(reference, method)(hashes), (method, hashes)
        assert twin.generations() == reference.generations(), (method, hashes)


@native_only
@given(st.lists(st.lists(st.integers(0, TOP), max_size=MAX_PREFIX_BLOCKS + 8).map(tuple), max_size=12))
def test_the_c_twin_agrees_on_any_hashes_and_long_calls(requests: list[tuple[int, ...]]) -> None:
    """Hashes from anywhere in the range, and calls longer than a generation (capacity 16:
    8 a generation), which make the twin grow its array mid-call."""
    twin, reference = NativePrefixMemory(16), PythonPrefixMemory(16)
    for hashes in requests:
        assert twin.see(hashes) == reference.see(hashes)
        assert twin.generations() == reference.generations()


# ---- behaviour, on each implementation ----------------------------------------------------

@each_implementation
def test_a_hash_is_forgotten_after_two_roll_overs(memory_class: Any) -> None:
    memory = memory_class(capacity=8)  # generations of 4
    assert memory.see((0, 1)) == 0
    assert memory.see((0, 1, 2)) == 2
    memory.remember((3,))  # 4 in the current generation: it becomes the previous one
    assert memory.generations() == (frozenset(), frozenset({0, 1, 2, 3}))
    assert memory.seen_depth((0, 1, 2, 3)) == 4
    memory.remember((10, 11, 12, 13))  # the second roll-over drops 0..3
    assert memory.seen_depth((0,)) == 0 and memory.seen_depth((10, 11, 12, 13)) == 4


@each_implementation
def test_repeats_within_one_call_are_not_seen_and_count_once(memory_class: Any) -> None:
    memory = memory_class(capacity=8)
    assert memory.see((7, 7, 7)) == 0
    assert memory.generations() == (frozenset({7}), frozenset())
    memory.remember((7, 8, 9))  # 3 distinct hashes: no roll-over yet
    assert memory.generations() == (frozenset({7, 8, 9}), frozenset())


@each_implementation
@pytest.mark.parametrize("capacity", [-3, 0, 1, 2, 3])
def test_a_capacity_under_four_keeps_one_hash_a_generation(memory_class: Any, capacity: int) -> None:
    memory = memory_class(capacity)
    assert memory.see((5,)) == 0
    assert memory.generations() == (frozenset(), frozenset({5}))  # rolled over at once
    assert memory.see((5,)) == 1
    assert memory.see((6,)) == 0
    assert memory.seen_depth((5,)) == 0 and memory.seen_depth((6,)) == 1


@each_implementation
def test_a_call_longer_than_a_generation_is_kept_whole(memory_class: Any) -> None:
    """The roll-over is checked once a call, after all its hashes: one call may overfill
    the current generation, and all of it becomes the previous one."""
    memory = memory_class(capacity=8)
    long_call = tuple(range(1000))
    memory.remember(long_call)
    assert memory.generations() == (frozenset(), frozenset(long_call))
    assert memory.see(long_call) == 1000
    memory.remember((2000, 2001, 2002))  # the repeat above filled the current generation
    assert memory.generations() == (frozenset({2000, 2001, 2002}), frozenset(long_call))
    memory.remember((2003,))
    assert memory.seen_depth(long_call) == 0


@each_implementation
@pytest.mark.parametrize("more", range(1, 40))
def test_misses_are_answered_however_full_a_call_leaves_a_generation(memory_class: Any, more: int) -> None:
    """Calls that fill the C twin's arrays to every level past their nominal size (a
    probe for a missing hash must still find an empty slot and stop)."""
    memory = memory_class(capacity=8)
    memory.remember((1, 2, 3))
    memory.remember(tuple(range(100, 100 + more)))
    assert memory.seen_depth((10**6,)) == 0
    assert memory.see((1, 2, 3, 10**6)) == 3  # the first call rolled over with the second


@each_implementation
def test_the_default_capacity_remembers_32k_hashes(memory_class: Any) -> None:
    memory = memory_class()
    first = tuple(range(1 << 40, (1 << 40) + 32767))
    memory.remember(first)  # one short of a generation
    assert memory.generations()[1] == frozenset()
    memory.remember((1,))
    assert memory.generations() == (frozenset(), frozenset((*first, 1)))


@each_implementation
def test_empty_calls_change_nothing(memory_class: Any) -> None:
    memory = memory_class(capacity=8)
    memory.remember((1, 2))
    assert memory.see(()) == 0 and memory.seen_depth(()) == 0
    memory.remember(())
    assert memory.generations() == (frozenset({1, 2}), frozenset())


@each_implementation
def test_a_list_of_hashes_is_taken_as_a_tuple(memory_class: Any) -> None:
    memory = memory_class(capacity=8)
    memory.remember([1, 2])
    assert memory.see([1, 2, 3]) == 2


# ---- bad input -------------------------------------------------------------------------------

BAD_HASHES = [
    ((1, -1), ValueError, "prefix hash 1 is -1, outside [0, 2**63)"),
    ((1, 2, 1 << 63), ValueError, f"prefix hash 2 is {1 << 63}, outside [0, 2**63)"),
    ((-(1 << 70),), ValueError, f"prefix hash 0 is {-(1 << 70)}, outside [0, 2**63)"),
    ((1, 1.0), TypeError, "prefix hash 1 is a float, not an int"),
    (("abc", -1), TypeError, "prefix hash 0 is a str, not an int"),
    ((1, None), TypeError, "prefix hash 1 is a NoneType, not an int"),
    (None, TypeError, "prefix hashes must be a tuple or list of ints, not a NoneType"),
    (iter((1, 2)), TypeError, "prefix hashes must be a tuple or list of ints, not a tuple_iterator"),
    ({1: None}, TypeError, "prefix hashes must be a tuple or list of ints, not a dict"),
]


@each_implementation
@pytest.mark.parametrize("method", ["see", "remember", "seen_depth"])
@pytest.mark.parametrize(("hashes", "error", "message"), BAD_HASHES)
def test_bad_hashes_are_refused_before_anything_changes(memory_class: Any, method: str, hashes: Any,
                                                        error: type[Exception], message: str) -> None:
    memory = memory_class(capacity=4)
    memory.remember((1,))
    before = memory.generations()
    with pytest.raises(error) as raised:
        getattr(memory, method)(hashes)
    assert str(raised.value) == message
    assert memory.generations() == before
    assert memory.see((1, 3)) == 1  # still working


@each_implementation
@pytest.mark.parametrize(("capacity", "error", "message"), [
    (8.0, TypeError, "capacity is a float, not an int"),
    ("8", TypeError, "capacity is a str, not an int"),
    ((1 << 32) + 1, ValueError, f"capacity {(1 << 32) + 1}: at most 2**32 hashes"),
    (1 << 80, ValueError, f"capacity {1 << 80}: at most 2**32 hashes"),
])
def test_bad_capacities_are_refused(memory_class: Any, capacity: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        memory_class(capacity)
    assert str(raised.value) == message


@each_implementation
def test_a_bool_is_an_int_as_in_a_dict(memory_class: Any) -> None:
    """bool is an int subclass (True == 1): both take it, as the dicts always did."""
    memory = memory_class(capacity=8)
    memory.remember((True, False))
    assert memory.seen_depth((1, 0)) == 2
