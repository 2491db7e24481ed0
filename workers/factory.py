"""Build the engine a worker config names. vLLM is imported only when asked for."""

from __future__ import annotations

from workers.config import WorkerConfig
from workers.engine import Engine
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
