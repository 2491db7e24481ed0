"""Where prefixes and sessions were placed recently: the router's map of warm caches.

A replica that served a prompt holds that prompt's KV blocks for a while, so "where did
this prefix go last time" is the best cheap guess of where it is cached. Each router
records its own placements and applies the placement records other routers publish on
the shared placements subject, so every router keeps (nearly) the same map without a
protocol of its own: records are facts, and applying one twice changes nothing here.

A prefix remembers its most recent ``fanout`` holders. A prefix with a full list of
holders has spread over the fleet (a shared system prompt, or the first block every
Mooncake request shares): replica choice then treats it as held everywhere.

Pure and bounded: plain dicts in two generations (when the newer one fills, the older one
is forgotten whole, and freed a little at each later insert), so the memory answers for
between ``capacity / 2`` and ``capacity`` hashes and every operation is O(1) per hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from router.context import PURE_PYTHON

# More holders than this per prefix would only widen the search without adding a warmer
# candidate; with 4, a prefix that four replicas served lately counts as fleet-wide.
DEFAULT_FANOUT = 4
DEFAULT_CAPACITY = 1 << 20

V = TypeVar("V")


class _TwoGenerations(Generic[V]):
    """A dict that forgets in bulk: O(1) inserts and lookups, no per-entry LRU links.

    When the newer generation fills, it becomes the older one and the older one retires:
    it is no longer read, and each later insert frees two of its entries, so no single
    insert pays for freeing half a million of them at once.
    """

    __slots__ = ("_capacity", "_retiring", "new", "old")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 2)
        self.new: dict[int, V] = {}
        self.old: dict[int, V] = {}
        self._retiring: dict[int, V] = {}

    def get(self, key: int) -> V | None:
        got = self.new.get(key)
        if got is None:
            got = self.old.get(key)
        return got

    def put(self, key: int, value: V) -> None:
        self.new[key] = value
        retiring = self._retiring
        if retiring:
            retiring.popitem()
            if retiring:
                retiring.popitem()
        if len(self.new) >= self._capacity // 2:
            if retiring:  # not freed yet (it cannot be: half a capacity of puts frees it)
                retiring.clear()
            self._retiring = self.old
            self.old = self.new
            self.new = {}

    def clear(self) -> None:
        self.new, self.old, self._retiring = {}, {}, {}

    def __contains__(self, key: int) -> bool:
        return key in self.new or key in self.old

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


# A prefix's entry is one int, not a tuple: ints are not tracked by Python's garbage
# collector, so a million entries neither make its collections longer nor (being created
# at a few dozen per request) make them more frequent. The holders' ids take ID_BITS each,
# most recent in the lowest bits, and the count of spread blocks sits above them.
ID_BITS = 20
_ID_MASK = (1 << ID_BITS) - 1
_DECODED_KEPT = 4096  # decoded holder lists kept (cleared whole when full)


class PlacementMemory:
    """Prefix hash → replicas that served it (most recent first); session → replica.

    Each prefix entry also carries how many leading blocks of that prompt had spread over
    the fleet when it was last placed, so one dict lookup answers both questions.
    """

    __slots__ = ("_decoded", "_fanout", "_full_shift", "_ids", "_names", "_prefixes",
                 "_sessions", "_shared_shift")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, fanout: int = DEFAULT_FANOUT) -> None:
        self._prefixes: _TwoGenerations[int] = _TwoGenerations(capacity)
        self._sessions: _TwoGenerations[str] = _TwoGenerations(max(capacity // 8, 2))
        self._fanout = fanout
        self._shared_shift = ID_BITS * fanout
        self._full_shift = ID_BITS * (fanout - 1)  # the last holder's field: set when full
        self._ids: dict[str, int] = {}
        self._names: list[str] = [""]  # id 0 means "no holder"
        self._decoded: dict[int, tuple[str, ...]] = {}

    @property
    def fanout(self) -> int:
        return self._fanout

    def _id(self, replica: str) -> int:
        rid = self._ids.get(replica)
        if rid is None:
            if len(self._names) > _ID_MASK:
                # A million replica names seen (years of restarts under fresh names):
                # start over rather than let the table grow.
                self._prefixes.clear()
                self._ids.clear()
                self._decoded.clear()
                del self._names[1:]
            rid = self._ids[replica] = len(self._names)
            self._names.append(replica)
        return rid

    def _holders(self, packed: int) -> tuple[str, ...]:
        # Few distinct holder lists exist at a time (ordered picks of fanout replicas
        # among those serving lately), so decoded ones are kept: one dict read per lookup.
        decoded = self._decoded.get(packed)
        if decoded is None:
            names = self._names
            out = []
            rest = packed
            while rest:
                out.append(names[rest & _ID_MASK])
                rest >>= ID_BITS
            decoded = tuple(out)
            if len(self._decoded) >= _DECODED_KEPT:
                self._decoded.clear()
            self._decoded[packed] = decoded
        return decoded

    # ---- lookups (the decision path) ----------------------------------------------------
    def session(self, session_hash: int) -> str | None:
        return self._sessions.get(session_hash)

    def holders(self, prefix_hash: int) -> tuple[str, ...]:
        """Replicas that served this prefix recently, most recent first."""
        entry = self._prefixes.get(prefix_hash)
        if entry is None:
            return ()
        return self._holders(entry & ((1 << self._shared_shift) - 1))

    def deepest(self, hashes: Sequence[int]) -> int:
        """The largest depth ``d`` whose hash ``hashes[d - 1]`` was placed; 0 if none."""
        return self.lookup(hashes)[0]

    def lookup(self, hashes: Sequence[int], hint: int = 0) -> tuple[int, int, tuple[str, ...]]:
        """(deepest placed depth, how many of those blocks have spread over the fleet, the
        holders of the deepest one if it has not): ``find`` without the session."""
        matched, common, holders, _ = self.find(hashes, hint)
        return matched, common, holders

    def find(self, hashes: Sequence[int], hint: int = 0,
             session_hash: int = 0) -> tuple[int, int, tuple[str, ...], str | None]:
        """What replica choice asks, in one call: (deepest placed depth, how many of those
        blocks have spread over the fleet, the holders of the deepest one if it has not,
        the session's replica or None).

        Binary search over the depths: a placement records every depth of its prompt at
        once, so when depth d is known every shallower depth of the same prompt is too (a
        generation drop forgets old entries together, deepest ones included). ``hint`` is a
        guess of the answer (the context's ``prefix_seen_depth``): when right, two probes
        confirm it; when wrong, they still bound the search (the answer is above or below
        it: on the Mooncake trace, 17 dict lookups at the p99 became 14). When the
        deepest placed prefix has spread, its holders are not returned: every replica is
        assumed to hold it, so none is preferred. (router/_choice.c makes the same probes
        in the same order: in the rare state where a generation change split a prompt's
        depths and the shallower ones retired, both give the same answer.)
        """
        sticky = None
        if session_hash:
            sessions = self._sessions
            sticky = sessions.new.get(session_hash)
            if sticky is None:
                sticky = sessions.old.get(session_hash)
        if not hashes:
            return 0, 0, (), sticky
        prefixes = self._prefixes
        new = prefixes.new
        old = prefixes.old
        size = len(hashes)
        # The answer lies in [low, high]: depth ``low`` is placed (0: trivially), none past
        # ``high`` is. The hint's probes narrow it first, right or wrong.
        low = 0
        high = size
        if 0 < hint <= size:
            h = hashes[hint - 1]
            if h in new or h in old:
                low = hint
                if hint < size and (hashes[hint] in new or hashes[hint] in old):
                    low = hint + 1
                else:
                    high = hint
            else:
                high = hint - 1
        if not low and high == size:
            # No hint (this router has not seen the prompt): the first block first, so a new
            # prompt is one probe (two dict misses). With the whole-prompt probe below first,
            # a new prompt took two (four misses, cold in a live router's choice).
            h = hashes[0]
            if not (h in new or h in old):
                return 0, 0, (), sticky
            low = 1
        if high == size and low < size:  # the whole prompt placed before (a retry, a regenerate)
            h = hashes[size - 1]
            if h in new or h in old:
                low = size
            else:
                high = size - 1
        if not low and high:
            h = hashes[0]
            if not (h in new or h in old):
                return 0, 0, (), sticky  # not even the first block: not placed
            low = 1
        while low < high:
            mid = (low + high + 1) // 2
            h = hashes[mid - 1]
            if h in new or h in old:
                low = mid
            else:
                high = mid - 1
        matched = low
        if not matched:
            return 0, 0, (), sticky
        key = hashes[matched - 1]
        entry = new.get(key)
        if entry is None:
            entry = old[key]
        shift = self._shared_shift
        shared = entry >> shift
        packed = entry & ((1 << shift) - 1)
        if packed >> self._full_shift:
            return matched, matched, (), sticky
        return matched, shared, self._holders(packed), sticky

    # ---- updates (after a publish, or a record from another router) -----------------------
    def record(self, replica: str, prefix_hashes: Sequence[int], session_hash: int = 0) -> None:
        prefixes = self._prefixes
        new = prefixes.new
        fanout = self._fanout
        shift = self._shared_shift
        holder_mask = (1 << shift) - 1
        full_shift = self._full_shift
        rid = self._id(replica)
        shared = 0
        spreading = True
        for h in prefix_hashes:
            entry = prefixes.get(h)
            if entry is None:
                holders = rid
            else:
                holders = entry & holder_mask
                if holders & _ID_MASK != rid:
                    # This replica first, then the others in their order, at most fanout.
                    rest = holders
                    holders = rid
                    at = ID_BITS
                    count = 1
                    while rest and count < fanout:
                        other = rest & _ID_MASK
                        if other != rid:
                            holders |= other << at
                            at += ID_BITS
                            count += 1
                        rest >>= ID_BITS
            if spreading:
                if holders >> full_shift:
                    shared += 1
                else:
                    spreading = False
            value = holders | shared << shift
            if entry != value or h not in new:
                prefixes.put(h, value)
                new = prefixes.new  # a put may have started a new generation
        if session_hash:
            self._sessions.put(session_hash, replica)

    def __len__(self) -> int:
        return len(self._prefixes)


# The claim's update in C (router/_choice.c's record: the same reads and writes of the same
# dicts, ~1/7 of the instructions, on every request), built by setup.py when a C compiler
# is there; PlacementMemory.record above is the reference, and what SLM_PURE_PYTHON=1 runs.
# tests/test_record_twin.py checks both leave identical memories.
record: Callable[[PlacementMemory, str, Sequence[int], int], None]
try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._choice import configure_record as _configure_record
    from router._choice import record as _native_record
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    _native_record = None
    record = PlacementMemory.record
else:
    _configure_record(memory_type=PlacementMemory, generations_type=_TwoGenerations, id_bits=ID_BITS)
    record = _native_record
NATIVE_RECORD = _native_record is not None  # record is the C twin
