"""router/order.py: the fleet's load order, C (LoadOrder) and Python (HeapOrder) alike.

Both answer ``least()`` as a scan of the fleet would: the usable replica below its limit
with the least outstanding weight, ties by name. Fleets driven by the same random changes
(placements, refused placements, samples, heartbeats that resize or drain, removals) are
compared with the scan after every change.
"""

from __future__ import annotations

import random

import pytest

from router.load import ReplicaLoad
from router.order import NATIVE_ORDER, HeapOrder, LoadOrder
from router.registry import Fleet, ReplicaTable
from subjects.messages import Heartbeat

MODEL = "general"
ORDERS = ["heap", pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE_ORDER, reason="router._choice not built, or SLM_PURE_PYTHON=1"))]


def scan(fleet: Fleet) -> str | None:
    open_ = [(load.weight, name) for name, load in fleet.usable.items() if load.requests < load.limit]
    return min(open_)[1] if open_ else None


def table_with(order: str) -> ReplicaTable:
    table = ReplicaTable(ttl=10.0, load_from_heartbeats=False)
    table.apply(Heartbeat(model=MODEL, replica="r0", capacity=2), 0.0)
    fleet = table.fleet(MODEL)
    if order == "heap":  # the reference, installed before the fleet's first change
        fleet._by_load = HeapOrder(fleet.usable)
        fleet._by_load.update(fleet.usable["r0"])
    assert isinstance(fleet._by_load, HeapOrder) == (order == "heap")
    return table


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("seed", range(4))
def test_least_is_the_scan_after_every_change(order: str, seed: int) -> None:
    rng = random.Random(seed)
    table = table_with(order)
    fleet = table.fleet(MODEL)
    names = [f"r{i}" for i in range(rng.choice((3, 12, 40)))]
    placed: dict[str, list[int]] = {}
    for step in range(2500):
        name = rng.choice(names)
        action = rng.random()
        if action < 0.4:
            weight = rng.choice((rng.randrange(1, 5000), 100))  # ties (by name) are common
            fleet.placed(name, weight)
            placed.setdefault(name, []).append(weight)
        elif action < 0.45 and placed.get(name):
            fleet.unplaced(name, placed[name].pop())  # its publish refused
        elif action < 0.8:
            fleet.sample(name, rng.randrange(0, 6))
        elif action < 0.97:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=rng.choice((1, 2, 3)),
                                  draining=rng.random() < 0.3), float(step))
        else:
            table.remove(MODEL, name)
        assert fleet.least_loaded() == scan(fleet), step
        if order == "native":  # exactly the usable, open replicas: nothing stale
            assert len(fleet._by_load) == sum(load.requests < load.limit for load in fleet.usable.values())


@pytest.mark.skipif(not NATIVE_ORDER, reason="router._choice not built, or SLM_PURE_PYTHON=1")
class TestLoadOrder:
    def loads(self, *specs: tuple[str, int]) -> list[ReplicaLoad]:
        out = []
        for name, weight in specs:
            load = ReplicaLoad(limit=4.0, name=name)
            load.weight = weight
            out.append(load)
        return out

    def test_weight_then_name_orders_and_saturation_takes_a_load_out(self) -> None:
        order = LoadOrder()
        a, b, c = self.loads(("a", 10), ("b", 10), ("c", 5))
        for load in (b, a, c):
            order.update(load)
        assert order.least() == "c" and len(order) == 3 and a in order
        c.weight = 11
        order.update(c)
        assert order.least() == "a"  # 10 and 10: by name
        a.requests = 4  # at its limit: saturated, out
        order.update(a)
        assert a not in order and order.least() == "b" and len(order) == 2
        a.requests = 3
        order.update(a)
        assert a in order and order.least() == "a"
        order.discard(a)
        order.discard(a)  # not in it: nothing
        assert a not in order and order.least() == "b"
        order.discard(b)
        order.discard(c)
        assert order.least() is None and len(order) == 0

    def test_weights_past_two_to_the_53_compare_exactly(self) -> None:
        order = LoadOrder()
        big = 2**60
        a, b = self.loads(("a", big + 1), ("b", big))  # equal as doubles, not as ints
        order.update(a)
        order.update(b)
        assert order.least() == "b"
        a.weight = big - 1
        order.update(a)
        assert order.least() == "a"

    def test_bad_loads_are_refused_with_what_is_wrong(self) -> None:
        order = LoadOrder()
        with pytest.raises(TypeError, match="ReplicaLoad"):
            order.update(object())
        (load,) = self.loads(("a", 1))
        order.update(load)
        with pytest.raises(ValueError, match="another LoadOrder"):
            LoadOrder().update(load)
        del load.weight
        with pytest.raises(AttributeError, match="weight"):
            order.update(load)
        unnamed = ReplicaLoad(limit=4.0, name="x")
        del unnamed.name
        with pytest.raises(AttributeError, match="name"):
            LoadOrder().update(unnamed)

    def test_a_name_deleted_while_held_is_an_error_not_a_crash(self) -> None:
        order = LoadOrder()
        (load,) = self.loads(("a", 1))
        order.update(load)
        del load.name
        with pytest.raises(AttributeError, match="name"):
            order.least()

    def test_a_dropped_order_lets_its_loads_join_another(self) -> None:
        (load,) = self.loads(("a", 1))
        first = LoadOrder()
        first.update(load)
        del first
        second = LoadOrder()
        second.update(load)
        assert second.least() == "a"
