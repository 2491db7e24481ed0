"""Replica choice: the ordered replicas to try for a request, then the model's ``.any``.

Pure and synchronous: the fleet view (heartbeats, load estimates, placement memory) comes
in as an argument, nothing reads a clock, and ties break on names, so every router that
holds the same view makes the same choice.

Candidates, each with the prompt blocks it is believed to hold:

1. **Session**: the replica this session's last turn went to.
2. **Longest placed prefix**: the replicas that served the deepest placed prefix of this
   prompt, found by a binary search over every depth (chained block hashes: depth d is
   "the whole prompt up to block d"). Every Mooncake request shares its first block, so
   depth 1 says nothing; the search finds the conversation a request continues. A prefix
   whose holder list is full has spread over the fleet (a shared system prompt): every
   replica is assumed to hold it, so it prefers nobody.
3. **New prefix**: the first ``ring_choices`` replicas the consistent-hash ring lists
   for the first block nobody has placed yet. Deterministic per prefix, so routers that
   see the same new document at once agree, and different new prefixes spread out.

The first choice is the candidate with the least *cost*: prompt tokens it would have to
prefill, plus ``load_cost ×`` its outstanding load. The next two are fallbacks for when
a queue refuses the publish; ``.any`` comes last.

**Bounded load.** Load is token weight: a request weighs the prompt its replica must
still prefill plus ``decode_weight ×`` its output tokens (an output token costs a decode
step, a prompt token a sliver of a prefill step). A candidate is taken only if its
outstanding load is at most ``(1 + load_epsilon) ×`` the fleet mean (this request
included; never less than one typical request, so a nearly idle fleet keeps affinity) —
except that a replica already holding part of this request's *own* prompt
(past any fleet-wide prefix) may exceed that by ``move_cost ×`` the tokens it holds beyond
``free_move_tokens``: sending the request elsewhere would cost that much prefill again,
while moving a short private prefix costs little. (That allowance is over the mean's
bound, not over the floor: the two do not add up.) So a hot shared prefix
fills its home to the bound and then spills along the ring, the replicas it spills to are
recorded as holders and are warm for it next time, and a long conversation is moved only
when its replica is over the bound by more than moving would waste. Saturated replicas
(outstanding requests at the fleet's ``saturation`` × capacity, router.registry) are
skipped; when every replica is saturated the request goes to ``.any``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import msgspec

from router.context import CHARS_PER_TOKEN, PREFIX_BLOCK_CHARS, PURE_PYTHON
from router.load import ReplicaLoad
from router.placement import ID_BITS, PlacementMemory
from router.registry import Fleet
from subjects.messages import CacheClass, PlacementRecord, RoutingContext
from subjects.names import ANY_REPLICA

BLOCK_TOKENS = int(PREFIX_BLOCK_CHARS / CHARS_PER_TOKEN)  # prompt tokens one prefix hash covers


class ReplicaSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of replica choice (RouterConfig carries the same names).

    Defaults were chosen on the offline replay (bench/replay.py, README "Replica choice").
    """

    # No replica's outstanding load may exceed (1 + epsilon) × the fleet mean …
    load_epsilon: float = 0.1
    # … except by move_cost × the prompt tokens of this request it already holds, past the
    # first free_move_tokens (moving that little is cheap: a fraction of a second of prefill);
    # that allowance is over the (1 + epsilon) × mean bound, not on top of the floor below.
    move_cost: float = 12.0
    free_move_tokens: int = 3072
    # Any replica may hold this many typical requests (the fleet's mean weight) whatever
    # the mean: below that, load is noise, not a hot spot.
    floor_requests: float = 2.0
    # Prompt-token equivalents of one output token in a request's weight.
    decode_weight: float = 32.0
    # Cost of a candidate: tokens to prefill + load_cost × its outstanding load.
    load_cost: float = 0.01
    # Output tokens assumed for a request that sets no max_tokens.
    default_output_tokens: int = 256
    # Unplaced replicas taken from the ring as candidates for new work.
    ring_choices: int = 4
    # Ring positions looked at before falling back to a scan for the least loaded.
    max_walk: int = 8
    # Replicas listed after the first choice (0-2), for when its queue refuses the publish.
    fallbacks: int = 2


DEFAULT_SETTINGS = ReplicaSettings()


def settings_from(config: object) -> ReplicaSettings:
    """The ReplicaSettings a RouterConfig (or anything with the same attributes) asks for."""
    names = [f for f in ReplicaSettings.__struct_fields__ if hasattr(config, f)]
    return ReplicaSettings(**{f: getattr(config, f) for f in names})

Candidates = list[tuple[str, CacheClass]]
_INF = math.inf
_SPILL = (ANY_REPLICA, CacheClass.SPILL)
_COLD, _STICKY, _PREFIX_HIT = CacheClass.COLD, CacheClass.SESSION_STICKY, CacheClass.PREFIX_HIT


def request_weight(ctx: RoutingContext, settings: ReplicaSettings = DEFAULT_SETTINGS,
                   cached_blocks: int = 0) -> int:
    """Token weight of a request on a replica that holds ``cached_blocks`` of its prompt."""
    prompt = max(ctx.prompt_tokens - cached_blocks * BLOCK_TOKENS, 1)
    output = ctx.max_tokens or settings.default_output_tokens
    return prompt + round(settings.decode_weight * output)


def choose_affinity_python(ctx: RoutingContext, fleet: Fleet,
                           settings: ReplicaSettings = DEFAULT_SETTINGS) -> Candidates:
    """Replicas to try in order (see the module docstring), then ``.any``; [] if none usable.

    The reference: ``choose_affinity`` is router/_choice.c's copy of this function when
    that module is built (and SLM_PURE_PYTHON is not 1), which must answer exactly as this
    one does (tests/test_choice_twin.py), and falls back to it for inputs it does not mirror.

    Written for speed (it runs on every request): one placement lookup (a binary search
    over the prefix depths, and the session), the candidate checks inlined, the best three
    kept in locals as load objects instead of a sorted list, the ring's candidates read
    from its lookup table, the answer built from entries each load object made once (no
    allocation per candidate), and nothing that grows with the fleet.
    """
    usable = fleet.usable
    count = len(usable)
    if not count:
        return []
    if not fleet.open_count:
        return [_SPILL]  # every replica is saturated
    hashes = ctx.prefix_hashes
    matched, common, holders, sticky = fleet.placements.find(
        hashes, ctx.prefix_seen_depth, ctx.session_hash)
    prompt = ctx.prompt_tokens
    uncached = prompt - matched * BLOCK_TOKENS
    if uncached < 1:
        uncached = 1
    output = settings.decode_weight * (ctx.max_tokens or settings.default_output_tokens)
    bound = (1.0 + settings.load_epsilon) * (fleet.usable_weight + uncached + output) / count
    floor = settings.floor_requests * fleet.fill_weight
    above_mean = bound  # (1 + epsilon) x the mean, before the floor
    if bound < floor:
        # A lightly loaded fleet: a replica holding a couple of typical requests is no hot
        # spot (the weighted form of the ceiling in consistent hashing with bounded
        # loads), and load samples a moment old must not scatter a conversation.
        bound = floor
    load_cost = settings.load_cost
    # The three cheapest candidates: cost and load object each; the name breaks ties.
    c1 = c2 = c3 = _INF
    l1: ReplicaLoad | None = None
    l2: ReplicaLoad | None = None
    l3: ReplicaLoad | None = None
    sticky_fits = False
    if sticky is not None and sticky in holders:
        sticky_apart = None
    else:
        sticky_apart = sticky
    if holders or sticky_apart is not None:
        # The session's last turn and the holders of this prompt's deepest prefix hold
        # ``matched`` blocks of it; they may exceed the bound by what moving would waste.
        # The floor and this allowance are two reasons to exceed the mean, not two
        # amounts that add up: stacked, a warm replica of a nearly idle fleet took a
        # floor's worth of requests plus the allowance (the hot tenant's first seconds,
        # when its shared prompt had one holder: 1.35x the mean in one draw).
        kept = (matched - common) * BLOCK_TOKENS - settings.free_move_tokens
        allowance = above_mean + settings.move_cost * kept if kept > 0 else above_mean
        if allowance < bound:
            allowance = bound
        for name in (sticky_apart, *holders) if sticky_apart is not None else holders:
            load = usable.get(name)
            if load is None or load.requests >= load.limit or load.weight > allowance:
                continue
            if name == sticky:
                sticky_fits = True
            cost = uncached + load_cost * load.weight
            if cost < c1 or (cost == c1 and name < l1.name):  # type: ignore[union-attr]
                c1, l1, c2, l2, c3, l3 = cost, load, c1, l1, c2, l2
            elif cost < c2 or (cost == c2 and name < l2.name):  # type: ignore[union-attr]
                c2, l2, c3, l3 = cost, load, c2, l2
            elif cost < c3 or (cost == c3 and name < l3.name):  # type: ignore[union-attr]
                c3, l3 = cost, load
    key = hashes[matched if matched < len(hashes) else -1] if hashes else ctx.session_hash
    # A prompt shorter than one block and with no session has nothing to keep warm: any
    # replica is as good as another, so it goes to the least loaded one (one heap read)
    # instead of the ring's candidates for key 0, which all such prompts would share.
    if key:
        wanted = settings.ring_choices
        cold = prompt - common * BLOCK_TOKENS
        for load in fleet.ring.successors(key, settings.max_walk):
            weight = load.weight
            if weight > bound or load.requests >= load.limit or not load.usable:
                continue
            name = load.name
            if name == sticky_apart or name in holders:
                continue  # a warm candidate, weighed above
            cost = cold + load_cost * weight
            if cost < c1 or (cost == c1 and name < l1.name):  # type: ignore[union-attr]
                c1, l1, c2, l2, c3, l3 = cost, load, c1, l1, c2, l2
            elif cost < c2 or (cost == c2 and name < l2.name):  # type: ignore[union-attr]
                c2, l2, c3, l3 = cost, load, c2, l2
            elif cost < c3 or (cost == c3 and name < l3.name):  # type: ignore[union-attr]
                c3, l3 = cost, load
            wanted -= 1
            if not wanted:
                break
    if l1 is None:
        # No key, or (rare) a long run of full replicas on the ring: the least loaded one
        # is at or below the mean, so within the bound unless it is saturated.
        least = fleet.least_loaded()
        if least is None:
            return [_SPILL]
        l1 = usable[least]
    first = l1
    if sticky_fits and l1.name != sticky:
        # Session first: its replica holds the conversation, hashed or not (a turn
        # shorter than a block has no prefix hash at all).
        first = usable[sticky]  # type: ignore[index]
        l1, l2, l3 = (l1 if l1 is not first else None, l2 if l2 is not first else None,
                      l3 if l3 is not first else None)
        if l1 is None:
            l1, l2, l3 = l2, l3, None
        elif l2 is None:
            l2, l3 = l3, None
    else:
        l1, l2, l3 = l2, l3, None
    name = first.name
    if name == sticky:
        out: Candidates = [first.as_sticky]
    elif common or name in holders:
        out = [first.as_prefix_hit]
    else:
        out = [first.as_cold]
    fallbacks = settings.fallbacks
    if l1 is not None and fallbacks > 0:
        out.append(l1.as_cold)
        if l2 is not None and fallbacks > 1:
            out.append(l2.as_cold)
            if l3 is not None and fallbacks > 2:
                out.append(l3.as_cold)
    out.append(_SPILL)
    return out


# The C twin (router/_choice.c, built by setup.py when a C compiler is there): the same
# choice in ~1/6 of the time, so the p99 stays under 10 µs on a busy 2-core box.
# SLM_PURE_PYTHON=1 (router.context) runs the Python above instead.
choose_affinity: Callable[[RoutingContext, Fleet, ReplicaSettings], Candidates]
try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._choice import choose_affinity as _native_choose_affinity
    from router._choice import configure as _configure_native
    from router._choice import find as _native_find
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    _native_choose_affinity = None
    choose_affinity = choose_affinity_python
    _find = PlacementMemory.find
else:
    _configure_native(reference=choose_affinity_python, find_reference=PlacementMemory.find,
                      default_settings=DEFAULT_SETTINGS, spill=_SPILL,
                      block_tokens=BLOCK_TOKENS, id_bits=ID_BITS,
                      least_loaded=Fleet.least_loaded)  # its answer (its LoadOrder's top) read in C
    choose_affinity = _native_choose_affinity
    _find = _native_find
NATIVE_CHOICE = _native_choose_affinity is not None  # choose_affinity is the C twin


def held_depth(ctx: RoutingContext, fleet: Fleet, replica: str) -> int:
    """Prompt blocks ``replica`` is believed to hold, by the same lookup choice uses."""
    matched, common, holders, sticky = _find(fleet.placements, ctx.prefix_hashes,
                                             ctx.prefix_seen_depth, ctx.session_hash)
    if replica in holders or (sticky is not None and sticky == replica):
        return matched
    return common


def _open(fleet: Fleet) -> list[str]:
    """Usable, unsaturated replicas in name order (the baselines' candidate list)."""
    return sorted(r for r, load in fleet.usable.items() if load.requests < load.limit)


# ---- baselines, for the replay's comparisons (same view, same saturation rule) --------------
def choose_round_robin(fleet: Fleet, turn: int,
                       settings: ReplicaSettings = DEFAULT_SETTINGS) -> Candidates:
    """The ``turn``-th open replica in name order (the caller counts turns)."""
    if fleet.usable_count <= 0:
        return []
    open_ = _open(fleet)
    if not open_:
        return [(ANY_REPLICA, CacheClass.SPILL)]
    return [(open_[turn % len(open_)], CacheClass.COLD), (ANY_REPLICA, CacheClass.SPILL)]


def choose_random(fleet: Fleet, rng: random.Random,
                  settings: ReplicaSettings = DEFAULT_SETTINGS) -> Candidates:
    if fleet.usable_count <= 0:
        return []
    open_ = _open(fleet)
    if not open_:
        return [(ANY_REPLICA, CacheClass.SPILL)]
    return [(rng.choice(open_), CacheClass.COLD), (ANY_REPLICA, CacheClass.SPILL)]


def choose_least_loaded(fleet: Fleet, settings: ReplicaSettings = DEFAULT_SETTINGS) -> Candidates:
    """The replica with the least outstanding token weight (ties by name)."""
    if fleet.usable_count <= 0:
        return []
    best = fleet.least_loaded()
    if best is None:
        return [(ANY_REPLICA, CacheClass.SPILL)]
    return [(best, CacheClass.COLD), (ANY_REPLICA, CacheClass.SPILL)]


# ---- after the publish ---------------------------------------------------------------------
def record_placement(fleet: Fleet, ctx: RoutingContext, replica: str,
                     settings: ReplicaSettings = DEFAULT_SETTINGS) -> int:
    """Remember that ``replica`` took this request; returns the weight it was charged."""
    if replica == ANY_REPLICA:
        return request_weight(ctx, settings)
    weight = request_weight(ctx, settings, held_depth(ctx, fleet, replica))
    fleet.placed(replica, weight, ctx.prefix_hashes, ctx.session_hash)
    return weight


def release_placement(fleet: Fleet, replica: str, weight: int) -> None:
    """Undo the load of ``record_placement`` when the publish it was made for is refused."""
    if replica != ANY_REPLICA:
        fleet.unplaced(replica, weight)


def apply_record(fleet: Fleet, record: PlacementRecord) -> None:
    """Apply another router's placement: the same update its own router made."""
    if record.replica != ANY_REPLICA:
        fleet.placed(record.replica, record.weight, record.prefix_hashes, record.session_hash)
