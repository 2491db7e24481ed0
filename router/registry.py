"""The router's view of live replicas, fed by the heartbeat bucket.

Pure state: heartbeats and the clock come in as arguments, so two routers that saw the
same heartbeats hold the same view, and tests need no NATS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from subjects.messages import Heartbeat


@dataclass(slots=True)
class ReplicaState:
    beat: Heartbeat
    seen_at: float  # router clock when the last heartbeat arrived


@dataclass(slots=True)
class ReplicaTable:
    """Live replicas per model. A replica without a heartbeat for ``ttl`` is dead."""

    ttl: float
    _models: dict[str, dict[str, ReplicaState]] = field(default_factory=dict)

    def apply(self, beat: Heartbeat, now: float) -> None:
        self._models.setdefault(beat.model, {})[beat.replica] = ReplicaState(beat, now)

    def remove(self, model: str, replica: str) -> bool:
        replicas = self._models.get(model)
        if replicas is None or replicas.pop(replica, None) is None:
            return False
        if not replicas:
            del self._models[model]
        return True

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop replicas whose heartbeat is older than ``ttl``; return (model, replica)."""
        dead = [
            (model, replica)
            for model, replicas in self._models.items()
            for replica, state in replicas.items()
            if now - state.seen_at > self.ttl
        ]
        for model, replica in dead:
            self.remove(model, replica)
        return dead

    def live(self, model: str) -> dict[str, ReplicaState]:
        """Replicas of ``model`` (call ``expire`` first to drop the silent ones)."""
        return self._models.get(model, {})

    def models(self) -> frozenset[str]:
        return frozenset(self._models)

    def __len__(self) -> int:
        return sum(len(r) for r in self._models.values())
