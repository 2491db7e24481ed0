"""Fixtures for the real-vLLM suite (``make test-vllm``, in the ``.venv-vllm`` venv).

One engine per test module: vLLM takes 25–45 s to start on this CPU, nearly all of it
spawning its engine process. An ``AsyncLLM`` must stay on the event loop it started on,
so every async fixture and test here runs on the module's loop. The model is a tiny
random Llama built at test time (no model hub needed).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from fabric.client import Client
from fabric.local import NatsServer
from fabric.models import build_tiny_llama
from router.config import RouterConfig
from router.service import Router
from tests.conftest import wait_until
from workers.config import WorkerConfig
from workers.vllm_engine import VllmEngine, VllmOptions, vllm_available
from workers.worker import Worker

# vLLM and torch warn about their own internals at import and at shutdown; the default
# suite turns warnings into errors, which would fail on code that is not ours.
VLLM_WARNINGS = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; unset, vLLM takes most of the RAM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not vllm_available():
        skip = pytest.mark.skip(reason="vLLM is not installed here: run `make test-vllm`")
        for item in items:
            if "tests/vllm/" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def tiny_options(model: Path, **overrides: Any) -> VllmOptions:
    settings: dict[str, Any] = dict(
        model_path=str(model), dtype="float32", max_num_seqs=8, block_size=32,
        enforce_eager=True, kv_cache_gib=1, max_model_len=2048)
    settings.update(overrides)
    return VllmOptions(**settings)


class VllmFabric:
    """A router and one vLLM worker on the module's loop, on a real nats-server."""

    def __init__(self, url: str, prefix: str, engine: VllmEngine) -> None:
        self.url, self.prefix, self.engine = url, prefix, engine
        self.router = Router(RouterConfig(nats_url=url, prefix=prefix))
        self.worker = Worker(WorkerConfig(nats_url=url, prefix=prefix, model="general",
                                          replica="r0", engine="vllm", max_inflight=8,
                                          idle_poll=0.05), engine)
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        for component in (self.router, self.worker):
            task = asyncio.ensure_future(component.run())
            self.tasks.append(task)
            ready = asyncio.ensure_future(component.ready.wait())
            await asyncio.wait({task, ready}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ready.cancel()
                raise AssertionError(f"{type(component).__name__} exited early: {task.result()}")
            assert component.ready.is_set(), f"{type(component).__name__} not ready in 180 s"
        await wait_until(lambda: len(self.router.table) >= 1, 10)

    async def stop(self) -> int:
        """Stop the worker (its exit code is returned), then the router."""
        self.worker.stop()
        worker_exit = await asyncio.wait_for(self.tasks[1], 60)
        self.router.stop()
        # The router is not under test here: give it a moment, then cancel it.
        await asyncio.wait({self.tasks[0]}, timeout=10)
        if not self.tasks[0].done():
            self.tasks[0].cancel()
            await asyncio.gather(self.tasks[0], return_exceptions=True)
        return int(worker_exit)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_fabric(nats_server: NatsServer, tiny_model: Path) -> AsyncIterator[VllmFabric]:
    engine = VllmEngine(tiny_options(tiny_model))
    fabric = VllmFabric(nats_server.url, "v" + uuid.uuid4().hex[:8], engine)
    await fabric.start()
    yield fabric
    assert await fabric.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_client(vllm_fabric: VllmFabric) -> AsyncIterator[Client]:
    client = await Client.connect(vllm_fabric.url, vllm_fabric.prefix)
    yield client
    await client.close()
