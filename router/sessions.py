"""Sticky sessions: which model each recent session last used.

Pure state: the clock comes in as an argument. A bounded LRU keyed by the session hash
(RoutingContext.session_hash), so memory stays flat however many sessions pass through.
Each router keeps its own table; routers that serve the same session converge because
they apply the same rules to the same conversation, and a miss costs one possibly
different model choice, never a wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict


class SessionTable:
    """Session hash → (model, last seen); entries older than ``ttl`` are not warm."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity: must be at least 1")
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[str, float]] = OrderedDict()

    def warm_model(self, session_hash: int, now: float, ttl: float) -> str:
        """The model the session used within ``ttl`` seconds before ``now``; "" if none."""
        entry = self._entries.get(session_hash)
        if entry is None:
            return ""
        model, seen = entry
        if now - seen > ttl:
            return ""
        return model

    def touch(self, session_hash: int, model: str, now: float) -> None:
        """Record that the session's request at ``now`` went to ``model``."""
        entries = self._entries
        entries[session_hash] = (model, now)
        entries.move_to_end(session_hash)
        if len(entries) > self._capacity:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
