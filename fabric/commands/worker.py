"""Run one worker (a model replica) against an existing NATS."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

import msgspec
import uvloop

from fabric.serve import serve_worker, setup_logging, start_metrics
from subjects.env import env_name
from subjects.names import check_token, slug
from workers.config import WorkerConfig, load_worker_config, replica_from_hostname
from workers.engine import EngineDeadError
from workers.factory import SharedEngine, make_engine
from workers.worker import Worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model this replica serves (SLM_MODEL)")
    parser.add_argument("--replica", help="replica id, one subject token (SLM_REPLICA)")
    parser.add_argument("--engine", choices=("sim", "vllm"), help="engine (SLM_ENGINE)")
    parser.add_argument("--nats-url", help="NATS server URL (SLM_NATS_URL)")
    parser.add_argument("--prefix", help="subject prefix (SLM_PREFIX)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics here (SLM_METRICS_PORT)")
    parser.add_argument("--log-level", default="INFO")
    admission = parser.add_argument_group("admission (defaults per model: workers.config.MODEL_ADMISSION)")
    admission.add_argument("--max-inflight", type=int, help="concurrent requests (SLM_MAX_INFLIGHT)")
    admission.add_argument("--fetch-batch", type=int, help="messages per pull at most (SLM_FETCH_BATCH)")
    admission.add_argument("--queue-bound", type=int, help="messages per replica queue (SLM_QUEUE_BOUND)")
    admission.add_argument("--max-queue-delay", type=float,
                           help="seconds work may wait before it is refused (SLM_MAX_QUEUE_DELAY)")
    admission.add_argument("--grace-seconds", type=float, help="SIGTERM: time to finish in-flight work")
    sim = parser.add_argument_group("simulated engine")
    sim.add_argument("--sim-time-scale", type=float, help="shrink simulated delays (SLM_SIM_TIME_SCALE)")
    vllm = parser.add_argument_group("vLLM engine")
    vllm.add_argument("--model-path", help="local Hugging Face model folder (SLM_MODEL_PATH)")
    vllm.add_argument("--dtype", help="auto, float32, bfloat16, float16 (SLM_DTYPE)")
    vllm.add_argument("--max-num-seqs", type=int, help="sequences per engine step (SLM_MAX_NUM_SEQS)")
    vllm.add_argument("--max-model-len", type=int, help="context length limit (SLM_MAX_MODEL_LEN)")
    vllm.add_argument("--kv-cache-gib", type=float, help="KV-cache size in GiB (SLM_KV_CACHE_GIB)")
    vllm.add_argument("--block-size", type=int, help="KV block size in tokens (SLM_BLOCK_SIZE)")
    vllm.add_argument("--enforce-eager", action="store_true", default=None,
                      help="no graph capture or compilation (SLM_ENFORCE_EAGER)")
    vllm.add_argument("--gpu-memory-utilization", type=float, help="(SLM_GPU_MEMORY_UTILIZATION)")
    vllm.add_argument("--also-serve", metavar="MODELS",
                      help="comma-separated model names this process also serves from the same "
                           "engine (SLM_EXTRA_MODELS): one engine behind several names")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    replica = check_token("replica", args.replica) if args.replica else _default_replica()
    flags = dict(
        model=args.model and slug(args.model), replica=replica, engine=args.engine,
        nats_url=args.nats_url, prefix=args.prefix, metrics_port=args.metrics_port,
        max_inflight=args.max_inflight, fetch_batch=args.fetch_batch,
        queue_bound=args.queue_bound, max_queue_delay=args.max_queue_delay,
        grace_seconds=args.grace_seconds, sim_time_scale=args.sim_time_scale,
        model_path=args.model_path, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
        block_size=args.block_size, enforce_eager=args.enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        extra_models=args.also_serve and [slug(m) for m in args.also_serve.split(",") if m.strip()],
    )
    config = load_worker_config(os.environ, **flags)
    try:
        if config.extra_models:
            return _serve_shared(config, flags)
        return serve_worker(config)
    except EngineDeadError as exc:
        print(f"slm-fabric worker: {exc}", file=sys.stderr)
        return 1


def _serve_shared(config: WorkerConfig, flags: dict[str, object]) -> int:
    """One engine, one worker per model name, in this process (see ``--also-serve``)."""
    names = [config.model, *[m for m in config.extra_models if m != config.model]]
    configs = [msgspec.structs.replace(load_worker_config(os.environ, **{**flags, "model": m}),
                                       extra_models=()) for m in names]

    async def main() -> int:
        engine = SharedEngine(make_engine(config), users=len(configs))
        # Start the engine before any worker talks to NATS: vLLM's start blocks the event
        # loop for tens of seconds, and a JetStream request in flight meanwhile times out.
        await engine.warmup()
        workers = [Worker(c, engine) for c in configs]
        start_metrics(config.metrics_host, config.metrics_port, workers[0].registry)
        def stop_all() -> None:
            for worker in workers:
                worker.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_all)
        codes = await asyncio.gather(*(w.run() for w in workers))
        return max(codes)

    return int(uvloop.run(main()))


def _default_replica() -> str | None:
    """Without --replica or SLM_REPLICA, name the replica after its host (compose --scale)."""
    return None if os.environ.get(env_name("replica")) else replica_from_hostname(socket.gethostname())
