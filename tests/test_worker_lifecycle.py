"""Worker life cycle: per-model admission, warm-up before warm, SIGTERM on a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import nats
import pytest

from fabric.client import chat
from fabric.local import NatsServer
from subjects import codec
from subjects.messages import Chunk
from tests.conftest import eventually, wait_until
from tests.test_worker_acks import Queue, ScriptedEngine, replies, settles_to
from workers.config import MODEL_ADMISSION, WorkerConfig, admission_for, load_worker_config

# ---- per-model admission ----------------------------------------------------------------


def test_each_model_gets_its_admission_row():
    extraction, reasoning = load_worker_config({}, model="extraction"), load_worker_config({}, model="reasoning")
    assert (extraction.max_inflight, extraction.fetch_batch, extraction.queue_bound) == (32, 16, 256)
    # Interactive reasoning: few at once, one per pull, and a tight queue delay.
    assert reasoning.max_inflight < extraction.max_inflight
    assert reasoning.fetch_batch == 1
    assert 0 < reasoning.max_queue_delay < extraction.max_queue_delay
    assert set(MODEL_ADMISSION) == {"extraction", "safety", "code", "general", "reasoning"}


def test_environment_and_flags_override_the_models_row():
    env = {"SLM_MODEL": "extraction", "SLM_MAX_INFLIGHT": "5"}
    assert load_worker_config(env).max_inflight == 5  # the variable beats the row
    assert load_worker_config(env).fetch_batch == 16  # …for that field only
    assert load_worker_config(env, max_inflight=3).max_inflight == 3  # a flag beats both


def test_a_model_without_a_row_gets_the_generic_defaults():
    row = admission_for("my-new-model")
    assert row.max_inflight == WorkerConfig().max_inflight
    assert load_worker_config({}, model="my-new-model").queue_bound == WorkerConfig().queue_bound


# ---- warm-up before warm ------------------------------------------------------------------


async def test_the_replica_reports_nothing_until_a_warm_up_request_has_run(fabric, client):
    engine = ScriptedEngine()
    engine.gate.clear()  # the warm-up request waits here
    start = asyncio.ensure_future(fabric.worker("general", "r0", engine=engine))
    await wait_until(lambda: engine.calls == ["warmup-r0"])
    kv = await client.nc.jetstream().key_value(client.names.replica_bucket)  # the worker made it
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # no heartbeat yet: routers cannot see a cold replica
        await kv.get(client.names.replica_key("general", "r0"))
    assert not start.done()
    engine.gate.set()
    worker = await start

    async def first_beat() -> bool:
        return bool(await kv.get(client.names.replica_key("general", "r0")))

    await wait_until_async(first_beat, 10)  # the first heartbeat follows the warm-up
    entry = await kv.get(client.names.replica_key("general", "r0"))
    beat = codec.decode_heartbeat(entry.value)
    assert beat.warm and not beat.draining and worker.warm


# ---- SIGTERM on a real worker process ---------------------------------------------------------------


def spawn_worker(server: NatsServer, prefix: str, *flags: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "fabric", "worker", "--nats-url", server.url, "--prefix", prefix,
            "--model", "general", "--replica", "r0", "--engine", "sim", *flags]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    return subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)


async def wait_exit(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    _, log = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, log


async def watch_for_draining(client, replica: str = "r0") -> asyncio.Future[bool]:
    """A future that resolves when the replica's heartbeat says draining."""
    kv = await client.nc.jetstream().key_value(client.names.replica_bucket)
    watcher = await kv.watch(client.names.replica_key("general", replica))
    seen: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        async for entry in watcher:
            if entry is not None and entry.value and codec.decode_heartbeat(entry.value).draining:
                seen.set_result(True)
                await watcher.stop()
                return

    following = asyncio.ensure_future(follow())
    seen.add_done_callback(lambda _: following.cancel())  # also holds the task alive
    return seen


async def test_sigterm_drains_finishes_in_flight_work_and_leaves_the_queue_alone(nats_server, client, prefix):
    # 2 slots; each answer takes ~2 s (40 tokens at 10× the default 5.5 ms per step).
    proc = spawn_worker(nats_server, prefix, "--sim-time-scale", "10", "--max-inflight", "2",
                        "--grace-seconds", "20")
    try:
        queue = Queue(client)
        await queue.ensure()
        js = client.nc.jetstream()

        async def heartbeating() -> bool:
            return bool(await (await js.key_value(client.names.replica_bucket)).keys())

        await wait_until_async(heartbeating, 20)  # warm
        draining = await watch_for_draining(client)
        subs = [await queue.put(chat(f"long answer {i}", max_tokens=40), f"term-{i}") for i in range(5)]
        for sub in subs[2:]:
            await sub.unsubscribe()  # these are never started
        first = [await s.next_msg(timeout=10) for s in subs[:2]]  # both slots are generating
        assert all(isinstance(codec.decode_reply(m.data), Chunk) for m in first)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(draining, 5)  # routers hear it at once
        for sub in subs[:2]:  # in-flight work finishes within the grace period
            got = await replies(sub, timeout=20)
            assert isinstance(got[-1], Chunk) and got[-1].finish_reason == "length"
        code, log = await wait_exit(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0
    summaries = [line for line in log.splitlines() if "stopped:" in line]
    assert len(summaries) == 1, log
    assert "2 completed" in summaries[0] and "0 released" in summaries[0]
    assert await queue.messages() == 3  # never fetched: still queued for another replica


async def test_sigterm_past_the_grace_period_hands_work_back_at_once(nats_server, client, prefix):
    proc = spawn_worker(nats_server, prefix, "--sim-time-scale", "10", "--grace-seconds", "0.3")
    try:
        queue = Queue(client)
        await queue.ensure()
        sub = await queue.put(chat("a very long answer", max_tokens=2000), "cut-1")
        await sub.next_msg(timeout=20)  # generating
        proc.send_signal(signal.SIGTERM)
        code, log = await wait_exit(proc)
        await sub.unsubscribe()  # unread chunks would stall the client's drain
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0
    assert "1 released" in next(line for line in log.splitlines() if "stopped:" in line)
    # Nak'd, so another replica gets it now, not after ack_wait (30 s).
    await settles_to(queue.messages, 1)
    psub = await client.nc.jetstream().pull_subscribe_bind(
        client.names.replica_consumer("general", "r0"), stream=client.names.work_stream("general"))
    (again,) = await psub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    await again.ack()


async def wait_until_async(read, timeout: float) -> None:
    """Until ``await read()`` is truthy (an exception counts as not yet)."""

    async def probe() -> bool:
        try:
            return bool(await read())
        except Exception:
            return False

    await eventually(probe, bool, timeout)
