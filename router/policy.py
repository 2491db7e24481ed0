"""The routing policy: request → (context, decision). Synchronous and pure.

No asyncio, no NATS, no wall clock: the registry view and ``now`` come in as arguments,
so the same inputs give the same decision on every router and in replays.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.context import PrefixMemory, build_context
from router.registry import ReplicaTable
from router.replicas import order_replicas
from router.rules import RuleSet
from subjects.messages import (
    CacheClass,
    ChatRequest,
    DecisionPath,
    RoutingContext,
    TaskClass,
)
from subjects.names import ANY_REPLICA, slug


class UnknownModel(ValueError):
    """Raised when a request names a model the fleet does not serve; the client's error."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    model: str
    task_class: TaskClass
    path: DecisionPath


@dataclass(slots=True)
class Policy:
    rules: RuleSet
    memory: PrefixMemory

    def context(self, request: ChatRequest) -> RoutingContext:
        return build_context(request, self.memory)

    def choose_model(self, ctx: RoutingContext) -> ModelChoice:
        if ctx.requested_model:
            wanted = slug(ctx.requested_model)
            for task_class, model in self.rules.models.items():
                if model == wanted:
                    return ModelChoice(model, task_class, DecisionPath.EXPLICIT)
            raise UnknownModel(
                f"model {ctx.requested_model!r} is not served here; "
                f"use 'auto' or one of {sorted(self.rules.served_models())}"
            )
        task_class, path = self.rules.task_class(ctx)
        return ModelChoice(self.rules.models[task_class], task_class, path)

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
