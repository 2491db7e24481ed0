"""A vLLM engine that dies under the worker: stop fetching, nak in-flight work, exit 1.

Its own module (and engine): the test kills the engine process, so nothing can follow it.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from fabric.client import Client, chat
from fabric.local import NatsServer
from subjects import codec
from subjects.messages import Chunk
from tests.test_worker_acks import Queue
from tests.vllm.conftest import VLLM_WARNINGS, tiny_options
from workers.config import WorkerConfig
from workers.vllm_engine import VllmEngine
from workers.worker import Worker

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module"), *VLLM_WARNINGS]


def engine_processes() -> list[Any]:
    """vLLM's engine-core and model-runner processes (children of this test process)."""
    import psutil  # a vLLM dependency: only in the vLLM venv, so imported here

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            text = child.name() + " " + " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "VLLM" in text or "EngineCore" in text:
            found.append(child)
    return found


async def test_engine_death_releases_work_and_the_worker_exits_non_zero(
        nats_server: NatsServer, tiny_model: Path) -> None:
    prefix = "d" + uuid.uuid4().hex[:8]
    client = await Client.connect(nats_server.url, prefix)
    engine = VllmEngine(tiny_options(tiny_model))
    worker = Worker(WorkerConfig(nats_url=nats_server.url, prefix=prefix, model="general",
                                 replica="r0", engine="vllm", idle_poll=0.05, grace_seconds=20), engine)
    run = asyncio.ensure_future(worker.run())
    ready = asyncio.ensure_future(worker.ready.wait())
    await asyncio.wait({run, ready}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
    assert worker.ready.is_set(), f"worker did not start: {run.result() if run.done() else 'timeout'}"
    queue = Queue(client)
    sub = await queue.put(chat("Write for a long time.", max_tokens=1800, temperature=0.0), "doomed-1")
    first = codec.decode_reply((await sub.next_msg(timeout=60)).data)
    assert isinstance(first, Chunk)  # generating now

    victims = engine_processes()
    assert victims, "no vLLM engine process found to kill"
    for process in victims:
        process.send_signal(signal.SIGKILL)

    exit_code = await asyncio.wait_for(run, 60)
    assert exit_code == 1
    # Released (nak'd) at least once; a nak can come straight back to this worker's last
    # open pull before its loop stops, and is released again.
    assert worker.released >= 1 and worker.completed == 0
    # Nak'd, not left for ack_wait (30 s): a fresh consumer fetch gets it at once.
    js = client.nc.jetstream()
    psub = await js.pull_subscribe_bind(client.names.replica_consumer("general", "r0"),
                                        stream=client.names.work_stream("general"))
    (again,) = await psub.fetch(1, timeout=5)
    assert again.metadata.num_delivered >= 2
    await again.nak()
    await sub.unsubscribe()
    await client.close()


@pytest.fixture(autouse=True)
def _no_engine_left_behind() -> Any:
    yield
    for process in engine_processes():
        process.kill()
