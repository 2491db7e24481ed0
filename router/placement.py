"""Where prefixes and sessions were placed recently: the router's map of warm caches.

A replica that served a prompt holds that prompt's KV blocks for a while, so "where did
this prefix go last time" is the best cheap guess of where it is cached. Each router
records its own placements and applies the placement records other routers publish on
the shared placements subject, so every router keeps (nearly) the same map without a
protocol of its own: records are facts, and applying one twice changes nothing here.

A prefix remembers its most recent ``fanout`` holders. A prefix with a full list of
holders has spread over the fleet (a shared system prompt, or the first block every
Mooncake request shares): replica choice then treats it as held everywhere.

Pure and bounded: two generations (when the newer one fills, the older one is forgotten
whole), so the memory answers for between ``capacity / 2`` and ``capacity`` hashes and
every operation is O(1) per hash. The prefix map is router._choice.PrefixMap where that
module is built (flat arrays allocated once: router/_prefix_map.h says why), and so is
the session map (session hash -> replica id); else _TwoGenerations, plain dicts each
split over 64 and freed a little at each later insert, no single operation paying for a
large dict's doubling or freeing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from router.context import PURE_PYTHON

# More holders than this per prefix would only widen the search without adding a warmer
# candidate; with 4, a prefix that four replicas served lately counts as fleet-wide.
DEFAULT_FANOUT = 4
DEFAULT_CAPACITY = 1 << 20

V = TypeVar("V")


# A generation is split over this many dicts, by a key's hash(). One dict grows by
# doubling, and a doubling copies every entry at once, inside whichever put crossed the
# size: measured here, the inserts at 87k, 175k and 350k entries took 5, 12 and 29 ms,
# and a generation of the default capacity holds up to 512k (router.context's
# PythonPrefixMemory is split the same way, for the same reason). A shard's doublings
# copy 1/64 of that: 45k claims of 16 hashes stopped for at most 0.4-0.7 ms, not 20-32
# (the shards double at about the same time, so p99.9 went from ~50 to ~200 us). The cost:
# a claim meets more dicts cold, ~1.5-4 us more at p50 in bench/decision.py's fresh state.
# The C map (PrefixMap below), the prefix map wherever router._choice is built, has
# neither; the dicts remain for fanouts past 4 and in pure Python.
SHARDS = 64
# A key's shard: the top bits of hash(key) x 2**64 / phi (mod 2**64), as router/_choice.c
# computes it. Not hash(key)'s low bits: a dict starts its probe at those, and a shard
# whose keys all shared them collided in its dict (+12% instructions in dict lookups).
_GOLDEN = 0x9E3779B97F4A7C15
_LOW_64 = (1 << 64) - 1
_SHARD_SHIFT = 64 - (SHARDS.bit_length() - 1)


def _shard(key: int) -> int:
    return ((hash(key) * _GOLDEN) & _LOW_64) >> _SHARD_SHIFT


def _shards() -> tuple[dict[int, V], ...]:
    return tuple({} for _ in range(SHARDS))


class _TwoGenerations(Generic[V]):
    """A dict that forgets in bulk: O(1) inserts and lookups, no per-entry LRU links.

    When the newer generation fills, it becomes the older one and the older one retires:
    it is no longer read, and each later insert frees two of its entries, so no single
    insert pays for freeing half a million of them at once. Each generation is SHARDS
    dicts, a key in the one ``_shard(key)`` picks, so that no insert pays for copying half
    a million entries either (see SHARDS).
    """

    __slots__ = ("_capacity", "_retiring", "_retiring_at", "_size", "new", "old")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 2)
        self.new: tuple[dict[int, V], ...] = _shards()
        self.old: tuple[dict[int, V], ...] = _shards()
        self._retiring: tuple[dict[int, V], ...] = _shards()
        self._size = 0  # keys in the newer generation
        self._retiring_at = 0  # the retiring shard being freed (those before it are empty)

    def get(self, key: int) -> V | None:
        shard = _shard(key)
        got = self.new[shard].get(key)
        if got is None:
            got = self.old[shard].get(key)
        return got

    def put(self, key: int, value: V) -> None:
        shard = self.new[_shard(key)]
        before = len(shard)
        shard[key] = value
        self._size += len(shard) - before
        retiring = self._retiring
        at = self._retiring_at
        for _ in range(2):  # free two of the retiring generation's entries
            while at < SHARDS and not retiring[at]:
                at += 1
            if at == SHARDS:
                break
            retiring[at].popitem()
        self._retiring_at = at
        if self._size >= self._capacity // 2:
            for rest in retiring:  # empty by now (half a capacity of puts frees it), unless
                rest.clear()  # a capacity below 4 filled the generation first
            self._retiring = self.old
            self._retiring_at = 0
            self.old = self.new
            self.new = _shards()
            self._size = 0

    def clear(self) -> None:
        self.new, self.old, self._retiring = _shards(), _shards(), _shards()
        self._size = self._retiring_at = 0

    def in_newer(self, key: int) -> bool:
        return key in self.new[_shard(key)]

    def __contains__(self, key: int) -> bool:
        shard = _shard(key)
        return key in self.new[shard] or key in self.old[shard]

    def __len__(self) -> int:
        return self._size + sum(map(len, self.old))


class PrefixStore(Protocol):
    """What PlacementMemory asks of its prefix map: _TwoGenerations[int], or the C map."""

    def get(self, key: int) -> int | None: ...
    def put(self, key: int, value: int) -> None: ...
    def in_newer(self, key: int) -> bool: ...
    def clear(self) -> None: ...
    def __contains__(self, key: int) -> bool: ...
    def __len__(self) -> int: ...


# The C prefix map (router._choice.PrefixMap, router/_prefix_map.h): the same answers as
# _TwoGenerations[int] for keys in [0, 2**63) (prefix hashes; it refuses other keys) and
# values below 2**128. Used when a prefix's holder list takes at most MAP_HOLDER_BITS
# (fanout 4: 80), so the spread count above it has 32 bits or more: a prompt of 2**32
# blocks would not fit, and none comes near.
MAP_HOLDER_BITS = 96
_PrefixMap: Callable[[int], PrefixStore] | None
try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._choice import PrefixMap as _NativePrefixMap
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    _PrefixMap = None
else:
    _PrefixMap = _NativePrefixMap


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
        self._prefixes: PrefixStore = (
            _PrefixMap(capacity) if _PrefixMap is not None and fanout * ID_BITS <= MAP_HOLDER_BITS
            else _TwoGenerations(capacity))
        # Session hash -> the id of the replica that served its last turn (ids, not names:
        # the same ints either map holds, no str object kept a session).
        sessions = max(capacity // 8, 2)
        self._sessions: PrefixStore = _PrefixMap(sessions) if _PrefixMap is not None else _TwoGenerations(sessions)
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
                self._sessions.clear()
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
        rid = self._sessions.get(session_hash)
        return None if rid is None else self._names[rid]

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
        sticky = self.session(session_hash) if session_hash else None
        if not hashes:
            return 0, 0, (), sticky
        prefixes = self._prefixes
        placed = prefixes.__contains__
        size = len(hashes)
        # The answer lies in [low, high]: depth ``low`` is placed (0: trivially), none past
        # ``high`` is. The hint's probes narrow it first, right or wrong.
        low = 0
        high = size
        if 0 < hint <= size:
            if placed(hashes[hint - 1]):
                low = hint
                if hint < size and placed(hashes[hint]):
                    low = hint + 1
                else:
                    high = hint
            else:
                high = hint - 1
        if not low and high == size:
            # No hint (this router has not seen the prompt): the first block first, so a new
            # prompt is one probe (two dict misses). With the whole-prompt probe below first,
            # a new prompt took two (four misses, cold in a live router's choice).
            if not placed(hashes[0]):
                return 0, 0, (), sticky
            low = 1
        if high == size and low < size:  # the whole prompt placed before (a retry, a regenerate)
            if placed(hashes[size - 1]):
                low = size
            else:
                high = size - 1
        if not low and high:
            if not placed(hashes[0]):
                return 0, 0, (), sticky  # not even the first block: not placed
            low = 1
        while low < high:
            mid = (low + high + 1) // 2
            if placed(hashes[mid - 1]):
                low = mid
            else:
                high = mid - 1
        matched = low
        if not matched:
            return 0, 0, (), sticky
        entry = prefixes.get(hashes[matched - 1])
        assert entry is not None  # the search's probe found it placed
        shift = self._shared_shift
        shared = entry >> shift
        packed = entry & ((1 << shift) - 1)
        if packed >> self._full_shift:
            return matched, matched, (), sticky
        return matched, shared, self._holders(packed), sticky

    # ---- updates (after a publish, or a record from another router) -----------------------
    def record(self, replica: str, prefix_hashes: Sequence[int], session_hash: int = 0) -> None:
        prefixes = self._prefixes
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
            if entry != value or not prefixes.in_newer(h):
                prefixes.put(h, value)
        if session_hash:
            self._sessions.put(session_hash, rid)

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
