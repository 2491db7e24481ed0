"""Replica choice: an ordered list of replicas to try for a request.

Pure: the registry view and the clock come in as arguments. Affinity first (session,
then prefix), by rendezvous hashing so every router that sees the same replicas makes the
same choice without talking to the others; saturated and draining replicas are skipped.
"""

from __future__ import annotations

import xxhash

from router.registry import ReplicaState
from subjects.messages import CacheClass, RoutingContext


def rendezvous_score(key: int, replica: str) -> int:
    return xxhash.xxh3_64_intdigest(replica.encode(), key & 0xFFFFFFFFFFFFFFFF)


def is_saturated(state: ReplicaState) -> bool:
    beat = state.beat
    return beat.in_flight + beat.queue_depth >= 2 * max(beat.capacity, 1)


def order_replicas(
    ctx: RoutingContext, replicas: dict[str, ReplicaState]
) -> list[tuple[str, CacheClass]]:
    """Replicas in the order the router should try them, with the reason for the first."""
    if not replicas:
        return []
    if ctx.session_hash:
        key, reason = ctx.session_hash, CacheClass.SESSION_STICKY
    elif ctx.prefix_hashes:
        key, reason = ctx.prefix_hashes[-1], CacheClass.PREFIX_HIT if ctx.prefix_seen_depth else CacheClass.COLD
    else:
        key, reason = 0, CacheClass.COLD
    ranked = sorted(replicas, key=lambda r: rendezvous_score(key, r), reverse=True)
    usable = [r for r in ranked if not replicas[r].beat.draining and not is_saturated(replicas[r])]
    if not usable:
        return []
    first = usable[0]
    return [(first, reason)] + [(r, CacheClass.COLD) for r in usable[1:]]
