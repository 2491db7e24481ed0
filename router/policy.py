"""The routing policy: request → (context, decision). Synchronous and pure.

No asyncio, no NATS, no wall clock: the registry view and ``now`` come in as arguments,
so the same inputs give the same decision on every router and in replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.context import PrefixMemory, build_context
from router.registry import ReplicaTable
from router.replicas import order_replicas
from router.rules import ModelChoice, RuleSet, UnknownModel, decide_model
from router.scorer import Scorer
from router.sessions import SessionTable
from subjects.messages import (
    CacheClass,
    ChatRequest,
    RoutingContext,
)
from subjects.names import ANY_REPLICA

__all__ = ["ModelChoice", "Policy", "UnknownModel"]


@dataclass(slots=True)
class Policy:
    rules: RuleSet
    memory: PrefixMemory
    scorer: Scorer | None = None  # None: scorer fields stay neutral, scorer rules rarely match
    sessions: SessionTable = field(default_factory=SessionTable)

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
        """Replicas to try in order, then the model's spill-over queue.

        Empty when no replica of the model is alive: nothing would drain ``.any``.
        """
        live = table.live(model)
        if not live:
            return []
        return order_replicas(ctx, live) + [(ANY_REPLICA, CacheClass.SPILL)]
