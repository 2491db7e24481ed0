"""The deterministic rule stage: ordered rules over context fields pick a task class.

Default rules follow DESIGN.md: safety → policy model; short structured output →
extraction; code → code; high complexity → reasoning; else general.
"""

from __future__ import annotations

from dataclasses import dataclass

from subjects.messages import (
    DecisionPath,
    RoutingContext,
    SafetyCategory,
    Structured,
    TaskClass,
)

DEFAULT_MODELS: dict[TaskClass, str] = {
    TaskClass.EXTRACTION: "extraction",
    TaskClass.CODE: "code",
    TaskClass.REASONING: "reasoning",
    TaskClass.SAFETY: "safety",
    TaskClass.GENERAL: "general",
}


@dataclass(frozen=True, slots=True)
class RuleSet:
    models: dict[TaskClass, str]
    structured_max_tokens: int = 800
    reasoning_threshold: float = 0.5

    def task_class(self, ctx: RoutingContext) -> tuple[TaskClass, DecisionPath]:
        if ctx.safety != SafetyCategory.NONE:
            return TaskClass.SAFETY, DecisionPath.RULE
        if ctx.structured != Structured.NONE and ctx.prompt_tokens <= self.structured_max_tokens:
            return TaskClass.EXTRACTION, DecisionPath.RULE
        if ctx.code_markers:
            return TaskClass.CODE, DecisionPath.RULE
        if ctx.complexity >= self.reasoning_threshold:
            return TaskClass.REASONING, DecisionPath.SCORER
        return TaskClass.GENERAL, DecisionPath.RULE

    def served_models(self) -> frozenset[str]:
        return frozenset(self.models.values())


DEFAULT_RULES = RuleSet(models=dict(DEFAULT_MODELS))
