"""The engine protocol a worker drives, and the errors an engine may raise.

Two implementations: ``workers.sim_engine`` (simulated, for machines without a GPU, tests
and routing benchmarks) and ``workers.vllm_engine`` (vLLM, the production engine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from subjects.messages import ChatRequest


@dataclass(frozen=True, slots=True)
class Delta:
    """New output since the previous delta; the last one has a ``finish_reason``."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1
    prefix_hit_rate: float  # 0..1, over the engine's lifetime


class EngineError(Exception):
    """Base class of engine failures."""


class EngineGenerateError(EngineError):
    """Raised when one request fails but the engine is fine; recoverable.

    ``retryable`` says whether another attempt (maybe on another replica) may succeed;
    when false the request ends with an ``engine_error`` reply.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class EngineRequestError(EngineGenerateError):
    """Raised when the engine cannot run the request as given (a bad sampling parameter,
    an unusable JSON schema, a prompt longer than the model); not retryable: the client
    gets a ``bad_request`` reply naming the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class EngineDeadError(EngineError):
    """Raised when the engine can serve nothing more; not recoverable: the worker exits."""


class Engine(Protocol):
    name: str
    capacity: int  # sequences it runs at once at full speed

    async def warmup(self) -> None: ...

    def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...
