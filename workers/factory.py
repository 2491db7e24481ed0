"""Build the engine a worker config names. vLLM is imported only when asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from subjects.messages import ChatRequest
from workers.config import WorkerConfig
from workers.engine import Delta, Engine, EngineStats
from workers.sim_engine import SimEngine, SimParams


class UnknownEngine(ValueError):
    """Raised when the config names an engine that does not exist; not recoverable."""


def make_engine(config: WorkerConfig) -> Engine:
    if config.engine == "sim":
        return SimEngine(SimParams(capacity=config.max_inflight,
                                   time_scale=config.sim_time_scale,
                                   cache_blocks=config.sim_cache_blocks))
    if config.engine == "vllm":
        from workers.vllm_engine import VllmEngine  # heavy: only on request

        return VllmEngine.from_config(config)
    raise UnknownEngine(f"engine {config.engine!r} is not one of: sim, vllm")


class SharedEngine:
    """One engine behind several workers (model names) in one process.

    For machines too small for an engine per model (``up --engine vllm`` on a laptop): the
    engine starts once, however many workers warm it up, and closes after the last one.
    """

    def __init__(self, engine: Engine, users: int) -> None:
        self.engine = engine
        self.name = engine.name
        self.capacity = engine.capacity
        self._users = users
        self._started: asyncio.Task[None] | None = None

    async def warmup(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self.engine.warmup())
        await asyncio.shield(self._started)

    def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]:
        return self.engine.generate(request_id, request)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def close(self) -> None:
        self._users -= 1
        if self._users == 0:
            await self.engine.close()
