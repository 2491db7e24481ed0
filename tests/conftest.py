"""Fixtures: a real nats-server per test module, and in-process routers and workers.

Each server listens on 127.0.0.1 on a random port with a temporary store. Routers and
workers run on the test's event loop (the same core the CLI runs in its own process).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from fabric.client import Client
from fabric.local import NatsServer
from router.config import RouterConfig
from router.service import Router
from workers.config import WorkerConfig
from workers.sim_engine import SimEngine, SimParams
from workers.worker import Worker

# A graceful stop takes a few seconds at most (grace periods, pull expiry).
STOP_TIMEOUT = 30.0

# The real-vLLM suite needs vLLM and its stack (the .venv-vllm of `make test-vllm`);
# the default venv does not even collect it.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A fresh subject prefix per test, so tests sharing a server never see each other."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
async def client(nats_server: NatsServer, prefix: str) -> AsyncIterator[Client]:
    c = await Client.connect(nats_server.url, prefix)
    yield c
    await c.close()


class Fabric:
    """Starts routers and workers on the running loop and stops them all at the end."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.routers: list[Router] = []
        self.workers: list[Worker] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def router(self, **settings: Any) -> Router:
        router = Router(RouterConfig(nats_url=self.url, prefix=self.prefix, **settings))
        await self._start(router.run(), router.ready)
        self.routers.append(router)
        return router

    async def worker(self, model: str = "general", replica: str = "r0", *,
                     engine: Any = None, **settings: Any) -> Worker:
        settings.setdefault("idle_poll", 0.05)
        config = WorkerConfig(nats_url=self.url, prefix=self.prefix, model=model,
                              replica=replica, **settings)
        engine = engine or SimEngine(SimParams(capacity=config.max_inflight, time_scale=0.01))
        worker = Worker(config, engine)
        await self._start(worker.run(), worker.ready)
        self.workers.append(worker)
        return worker

    async def _start(self, coro: Awaitable[Any], ready: asyncio.Event) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()  # raises what went wrong
        assert ready.is_set(), "component did not become ready in 20 s"

    async def wait_for_replicas(self, count: int, timeout: float = 10.0) -> None:
        """Until every router sees ``count`` live replicas (heartbeats arrive each second)."""
        await wait_until(lambda: all(len(r.table) >= count for r in self.routers), timeout)

    async def stop(self) -> None:
        for component in [*self.routers, *self.workers]:
            component.stop()
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
        if stuck:
            # Name what hung and where, instead of a bare teardown timeout: every task still
            # running (a component waits on its children, so theirs are the telling stacks).
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.print_stack(file=stacks)
            for task in stuck:
                task.cancel()
            raise AssertionError(f"{len(stuck)} component(s) did not stop in {STOP_TIMEOUT} s:\n"
                                 f"{stacks.getvalue()}")
        errors = [t.exception() for t in self._tasks if not t.cancelled() and t.exception()]
        assert not errors, errors


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 10.0,
                     step: float = 0.05) -> T:
    """Await ``probe()`` until ``check`` holds for its result, and return that result: the
    bounded poll for state no event announces (a stream's message count, a monitor's
    snapshot, a scraped page). Raises AssertionError with the last result at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if check(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last result: {str(result)[:1000]}")
        await asyncio.sleep(step)


@pytest.fixture
async def fabric(nats_server: NatsServer, prefix: str) -> AsyncIterator[Fabric]:
    f = Fabric(nats_server.url, prefix)
    yield f
    await f.stop()
