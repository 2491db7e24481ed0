"""The routing policy: request → (context, decision). Synchronous and pure.

No asyncio, no NATS, no wall clock: the registry view and ``now`` come in as arguments,
so the same inputs give the same decision on every router and in replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.context import PrefixMemory, build_context
from router.registry import ReplicaTable
from router.replicas import (
    DEFAULT_SETTINGS,
    ReplicaSettings,
    apply_record,
    choose_affinity,
    record_placement,
    release_placement,
)
from router.rules import ModelChoice, RuleSet, UnknownModel, decide_model
from router.scorer import Scorer
from router.sessions import SessionTable
from subjects.messages import (
    CacheClass,
    ChatRequest,
    PlacementRecord,
    RoutingContext,
)

__all__ = ["ModelChoice", "Policy", "UnknownModel"]


@dataclass(slots=True)
class Policy:
    rules: RuleSet
    memory: PrefixMemory
    scorer: Scorer | None = None  # None: scorer fields stay neutral, scorer rules rarely match
    sessions: SessionTable = field(default_factory=SessionTable)
    replica_settings: ReplicaSettings = field(default=DEFAULT_SETTINGS)

    def context(self, request: ChatRequest) -> RoutingContext:
        return build_context(request, self.memory, self.scorer)

    def choose_model(self, ctx: RoutingContext, now: float = 0.0) -> ModelChoice:
        """The model for ``ctx`` (router.rules.decide_model), remembering the session.

        ``now`` is the router's clock (seconds) for the sticky-session table. Raises
        UnknownModel when the request names a model the rules do not serve.
        """
        warm = ""
        if ctx.session_hash:
            warm = self.sessions.warm_model(ctx.session_hash, now, self.rules.sticky_ttl)
        choice = decide_model(self.rules, ctx, warm)
        if ctx.session_hash:
            self.sessions.touch(ctx.session_hash, choice.model, now)
        return choice

    def choose_replicas(
        self, ctx: RoutingContext, model: str, table: ReplicaTable
    ) -> list[tuple[str, CacheClass]]:
        """Replicas to try in order, then the model's spill-over queue (router.replicas).

        Empty when no usable replica of the model is alive: nothing would drain ``.any``.
        """
        return choose_affinity(ctx, table.fleet(model), self.replica_settings)

    def placed(self, ctx: RoutingContext, model: str, replica: str, table: ReplicaTable) -> int:
        """Record that ``replica`` took the request; returns the token weight it was charged."""
        return record_placement(table.fleet(model), ctx, replica, self.replica_settings)

    def released(self, model: str, replica: str, weight: int, table: ReplicaTable) -> None:
        """Take back the load ``placed`` charged when that replica's queue refused the work."""
        release_placement(table.fleet(model), replica, weight)

    def apply_placement(self, record: PlacementRecord, table: ReplicaTable) -> None:
        """Apply another router's placement record to this router's view.

        Its prefixes count as seen here too, so ``prefix_seen_depth`` means "placed
        anywhere in the fleet lately" on every router (replica choice starts from it).
        """
        apply_record(table.fleet(record.model), record)
        self.memory.remember(record.prefix_hashes)
