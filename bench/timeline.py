"""Where a request's time to first token goes through the fabric: a per-stage timeline.

The set-up of ``bench/engine.py`` (a router process; worker, simulated engine at its
default constants and client in this process, on uvloop), one request at a time with
2-token answers. Every stage is stamped with ``time.perf_counter_ns()`` — CLOCK_MONOTONIC,
one clock for every process on the machine — by wrappers this script installs around the
fabric's own functions (in the router process too: it runs as ``--router-child``); the
fabric code itself carries no tracing. Stages:

    client stream() called → client publish → client socket write
    → router parses the message → router subscription callback → router handle()
    → router JetStream publish → router socket write → PubAck back at the router
    → worker parses the delivery → worker _on_message → engine generate()
    → engine first token → worker first-chunk publish → worker socket write
    → client parses the chunk → client stream() yields it

Printed: the median (and p90) time from each stage to the next, and the total, next to
the direct path's TTFT (``engine.generate()`` to its first delta) in the same run.

``--load N`` adds bench/engine's 8-stream phase and counts the worker's pulls (the refill);
``--cpu-per-chunk`` measures instead the CPU each process spends per streamed chunk.

Run: ``python -m bench.timeline [--requests 200]`` (prints; writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.transport import TcpTransport
from nats.js import JetStreamContext

from bench.engine import request, served
from fabric.local import NatsServer, ProcessGroup, component_command
from subjects import codec
from subjects.names import HEADER_MSG_ID

# The ids are read after the run with the codec as it was (the router's gets wrapped).
_decode_request, _decode_reply = codec.decode_request, codec.decode_reply
Stamp = tuple[str, int, str]  # stage, perf_counter_ns, request id ("" = fill in later)
_stamps: list[Stamp] = []
_raw: list[tuple[str, int, Any]] = []  # stage, ns, something to read the id from later


def _now() -> int:
    return time.perf_counter_ns()


def _install_nats_probes(label: Callable[[NATS], str | None]) -> None:
    """Stamp every parsed MSG and every socket write of the connections ``label`` names."""
    process_msg = NATS._process_msg
    writelines = TcpTransport.writelines
    transports: dict[int, str] = {}

    async def traced_process_msg(self: NATS, sid: int, subject: bytes, reply: bytes, data: bytes,
                                 headers: bytes) -> None:
        name = label(self)
        if name is not None:
            transports[id(self._transport)] = name
            _raw.append((f"{name}:parse", _now(), (subject, data, headers)))
        await process_msg(self, sid, subject, reply, data, headers)

    def traced_writelines(self: TcpTransport, payload: list[bytes]) -> None:
        name = transports.get(id(self))
        if name is not None:
            _raw.append((f"{name}:write", _now(), None))
        writelines(self, payload)  # type: ignore[no-untyped-call]

    NATS._process_msg = traced_process_msg  # type: ignore[method-assign]
    TcpTransport.writelines = traced_writelines  # type: ignore[method-assign]
    _probes["transports"] = transports


_probes: dict[str, Any] = {}


def _register(nc: NATS, name: str) -> None:
    _probes["transports"][id(nc._transport)] = name


# ---- the router process --------------------------------------------------------------
def router_child(nats_url: str, out: str) -> int:
    from router.config import RouterConfig
    from router.service import Router
    from subjects.env import read_config

    _install_nats_probes(lambda nc: "router" if nc.options.get("name") == "slm-router" else None)
    enqueue, handle = Router._enqueue, Router.handle
    publish = JetStreamContext.publish

    async def traced_enqueue(self: Router, msg: Any) -> None:
        _raw.append(("router:callback", _now(), msg.data))
        await enqueue(self, msg)

    async def traced_handle(self: Router, msg: Any) -> None:
        _current[0] = msg.data
        _raw.append(("router:handle", _now(), msg.data))
        await handle(self, msg)

    async def traced_publish(self: JetStreamContext, subject: str, payload: bytes = b"",
                             headers: dict[str, str] | None = None, **kw: Any) -> Any:
        rid = (headers or {}).get(HEADER_MSG_ID, "")
        _stamps.append(("router:js_publish", _now(), rid))
        try:
            return await publish(self, subject, payload, headers=headers, **kw)
        finally:
            _stamps.append(("router:puback", _now(), rid))

    _trace_router_steps()
    Router._enqueue = traced_enqueue  # type: ignore[method-assign]
    Router.handle = traced_handle  # type: ignore[method-assign]
    JetStreamContext.publish = traced_publish  # type: ignore[method-assign,assignment]
    config = read_config(RouterConfig, os.environ, nats_url=nats_url)

    async def main() -> None:
        router = Router(config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, router.stop)
        await router.run()

    uvloop.run(main())
    Path(out).write_text(json.dumps(_resolve()))
    return 0


_current: list[bytes] = [b""]  # the request the router is handling (one at a time)
ROUTER_STEPS = ["router:handle", "router:decoded", "router:context", "router:model",
                "router:replicas", "router:placed", "router:encoded", "router:js_publish"]


def _trace_router_steps() -> None:
    """Stamp the end of each step between handle() and the JetStream publish."""
    from router.policy import Policy

    def after(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any, **kw: Any) -> Any:
            result = fn(*args, **kw)
            _raw.append((stage, _now(), _current[0]))
            return result
        return traced

    # This process runs only the router: its codec functions can be wrapped in place.
    codec.decode_request = after("router:decoded", codec.decode_request)
    codec.encode_work = after("router:encoded", codec.encode_work)
    Policy.context = after("router:context", Policy.context)  # type: ignore[method-assign]
    Policy.choose_model = after("router:model", Policy.choose_model)  # type: ignore[method-assign]
    Policy.choose_replicas = after("router:replicas", Policy.choose_replicas)  # type: ignore[method-assign]
    Policy.placed = after("router:placed", Policy.placed)  # type: ignore[method-assign]


def _request_id(stage: str, obj: Any) -> str:
    """The request id a raw stamp belongs to (decoded after the run, off the clock)."""
    if obj is None:
        return ""
    if isinstance(obj, tuple):
        _subject, data, headers = obj
        if stage.startswith("router"):
            return _id_of_request(data)
        if b"Nats-Msg-Id" in (headers or b""):
            for line in headers.split(b"\r\n"):
                if line.startswith(b"Nats-Msg-Id:"):
                    return str(line.split(b":", 1)[1].strip().decode())
        try:
            return str(_decode_reply(data).request_id)
        except Exception:
            return ""
    return _id_of_request(obj)


def _id_of_request(data: bytes) -> str:
    try:
        return _decode_request(data).id or ""
    except Exception:
        return ""


def _resolve() -> list[Stamp]:
    return _stamps + [(stage, ns, _request_id(stage, obj)) for stage, ns, obj in _raw]


# ---- this process: worker, engine, client --------------------------------------------
async def _load_phase(client: Any, count: int, concurrency: int = 8, max_tokens: int = 64) -> None:
    """bench/engine's throughput phase: ``concurrency`` streams, each request after the last."""
    from workers.pull import Puller

    request_pull = Puller._request

    async def traced_request(self: Puller, req: Any, body: dict[str, object], *a: Any, **k: Any) -> Any:
        _stamps.append((f"pull:{self.consumer}:{body.get('batch')}:{'max_bytes' in body}", _now(), ""))
        result = await request_pull(self, req, body, *a, **k)
        _stamps.append((f"pulled:{self.consumer}:{result.status}:{result.received}", _now(), ""))
        return result

    Puller._request = traced_request  # type: ignore[method-assign,assignment]
    ids = iter(range(count))

    async def stream() -> None:
        for i in ids:
            req = msgspec.structs.replace(request(i, max_tokens), id=f"x{i:04d}")
            _stamps.append(("client:stream", _now(), req.id or ""))
            async for _ in client.stream(req, timeout=30):
                pass
            _stamps.append(("client:done", _now(), req.id or ""))

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    Puller._request = request_pull  # type: ignore[method-assign]


def load_report(stamps: list[Any]) -> str:
    by_id: dict[str, dict[str, int]] = defaultdict(dict)
    pulls = []
    for stage, ns, rid in stamps:
        if rid.startswith("x"):
            by_id[rid].setdefault(stage, ns)
        elif stage.startswith("pull"):
            pulls.append((ns, stage))
    rows = [r for r in by_id.values() if "worker:on_message" in r and "client:stream" in r]
    d = [(r["worker:on_message"] - r["client:stream"]) / 1000 for r in rows]
    e = [(r["engine:start"] - r["worker:on_message"]) / 1000 for r in rows if "engine:start" in r]
    lines = [f"load phase: {len(rows)} requests, 8 streams: client:stream → worker:on_message "
             f"p50 {statistics.median(d):.0f} µs, p90 {_p90(d):.0f}; on_message → engine:start "
             f"p50 {statistics.median(e):.0f} µs"]
    kinds: dict[str, int] = defaultdict(int)
    for _, stage in pulls:
        kinds[stage] += 1
    lines.append("pulls: " + ", ".join(f"{k} ×{v}" for k, v in sorted(kinds.items())))
    return "\n".join(lines)


async def run(requests: int, load: int = 0) -> tuple[list[dict[str, int]], list[float]]:
    from fabric.client import Client
    from workers.config import WorkerConfig
    from workers.sim_engine import SimEngine, SimParams
    from workers.worker import Worker

    nats_names: dict[int, str] = {}
    _install_nats_probes(lambda nc: nats_names.get(id(nc)))
    on_message = Worker._on_message
    nc_publish = NATS.publish

    def traced_on_message(self: Worker, msg: Any) -> None:
        _raw.append(("worker:on_message", _now(), (msg.subject, b"", _headers_bytes(msg))))
        on_message(self, msg)

    async def traced_nc_publish(self: NATS, subject: str, payload: bytes = b"", reply: str = "",
                                headers: dict[str, str] | None = None) -> None:
        name = nats_names.get(id(self))
        if name == "worker" and payload:
            try:
                chunk = codec.decode_reply(payload)
                if getattr(chunk, "seq", -1) == 0:
                    _stamps.append(("worker:chunk_publish", _now(), chunk.request_id))
            except Exception:
                pass
        elif name == "client" and reply:
            _stamps.append(("client:publish", _now(), _id_of_request(payload)))
        await nc_publish(self, subject, payload, reply, headers)

    Worker._on_message = traced_on_message  # type: ignore[method-assign]
    NATS.publish = traced_nc_publish  # type: ignore[method-assign]

    engine = SimEngine(SimParams(capacity=8))
    generate = engine.generate

    async def traced_generate(rid: str, req: Any) -> Any:
        _stamps.append(("engine:start", _now(), rid))
        first = True
        async for delta in generate(rid, req):
            if first:
                _stamps.append(("engine:first_token", _now(), rid))
                first = False
            yield delta

    with tempfile.TemporaryDirectory(prefix="slm-timeline-") as tmp, NatsServer() as server:
        out = Path(tmp) / "router.json"
        group = ProcessGroup()
        group.spawn("router", [sys.executable, "-m", "bench.timeline", "--router-child",
                               "--nats-url", server.url, "--out", str(out)])
        worker = Worker(WorkerConfig(nats_url=server.url, model="general", replica="r0",
                                     engine="sim", max_inflight=8, fetch_batch=8,
                                     max_queue_delay=0.0), engine)
        task = asyncio.ensure_future(worker.run())
        direct: list[float] = []
        try:
            await asyncio.wait_for(worker.ready.wait(), 60)
            assert worker.nc is not None
            nats_names[id(worker.nc)] = "worker"
            client = await Client.connect(server.url)
            nats_names[id(client.nc)] = "client"
            _register(worker.nc, "worker")
            _register(client.nc, "client")
            await served(client)
            engine.generate = traced_generate  # type: ignore[method-assign,assignment]
            for i in range(requests + 20):  # the first 20 warm up; alternate with direct
                # Each answer is read to its end (as bench/engine does), so the engine is
                # idle again when the next request starts.
                t0 = time.perf_counter()
                first = 0.0
                async for _ in generate(f"direct-{uuid.uuid4().hex}", request(i, 2)):
                    first = first or time.perf_counter() - t0
                if i >= 20:
                    direct.append(first)
                req = msgspec.structs.replace(request(i, 2), id=f"t{i:04d}")
                _stamps.append(("client:stream", _now(), req.id or ""))
                async for chunk in client.stream(req, timeout=30):
                    if chunk.seq == 0:
                        _stamps.append(("client:first_chunk", _now(), req.id or ""))
            if load:
                await _load_phase(client, load)
            await client.close()
        finally:
            worker.stop()
            await asyncio.wait_for(task, 60)
            group.stop()
        router_stamps = json.loads(out.read_text()) if out.exists() else []
    stamps = _resolve() + [tuple(s) for s in router_stamps]
    if load:
        print(load_report(stamps))
    return _per_request(stamps, requests), direct


def _headers_bytes(msg: Any) -> bytes:
    rid = (msg.headers or {}).get(HEADER_MSG_ID, "")
    return f"Nats-Msg-Id: {rid}".encode()


STAGES = [
    "client:stream", "client:publish", "client:write",
    "router:parse", "router:callback", "router:handle", "router:js_publish", "router:write",
    "worker:parse", "worker:on_message", "engine:start", "engine:first_token",
    "worker:chunk_publish", "worker:write", "client:parse", "client:first_chunk",
]
AFTER = ["router:puback"]  # off the TTFT path: printed relative to router:js_publish


def _per_request(stamps: list[Any], requests: int) -> list[dict[str, int]]:
    by_id: dict[str, dict[str, int]] = defaultdict(dict)
    writes: dict[str, list[int]] = defaultdict(list)
    for stage, ns, rid in stamps:
        if stage.endswith(":write"):
            writes[stage].append(ns)
        elif rid:
            by_id[rid].setdefault(stage, ns)  # the first occurrence
    for lst in writes.values():
        lst.sort()
    out = []
    for rid, st in by_id.items():
        if not rid.startswith("t") or int(rid[1:]) < 20:
            continue
        # A socket write belongs to the stage before it: the first write at or after it.
        for write, after in (("client:write", "client:publish"), ("router:write", "router:js_publish"),
                             ("worker:write", "worker:chunk_publish")):
            if after in st:
                st[write] = next((w for w in writes[write] if w >= st[after]), 0)
        if all(st.get(s) for s in STAGES):
            out.append(st)
    return out


def report(rows: list[dict[str, int]], direct: list[float]) -> str:
    lines = [f"{len(rows)} requests through the fabric, one at a time, 2-token answers; "
             f"load average {os.getloadavg()[0]:.2f}", "",
             "| from → to | p50 µs | p90 µs |", "|---|---|---|"]
    for a, b in itertools.pairwise(STAGES):
        d = [(r[b] - r[a]) / 1000 for r in rows]
        lines.append(f"| {a} → {b} | {statistics.median(d):.0f} | {_p90(d):.0f} |")
    d = [(r["router:puback"] - r["router:js_publish"]) / 1000 for r in rows if "router:puback" in r]
    if d:
        lines.append(f"| (router:js_publish → router:puback) | {statistics.median(d):.0f} | {_p90(d):.0f} |")
    steps = [s for s in ROUTER_STEPS if all(s in r for r in rows)]
    if len(steps) > 2:
        lines += ["", "Inside router:handle → router:js_publish:", "",
                  "| step | p50 µs | p90 µs |", "|---|---|---|"]
        for a, b in itertools.pairwise(steps):
            d = [(r[b] - r[a]) / 1000 for r in rows]
            lines.append(f"| {a} → {b} | {statistics.median(d):.0f} | {_p90(d):.0f} |")
        lines += ["", "| | | |", "|---|---|---|"]
    total = [(r[STAGES[-1]] - r[STAGES[0]]) / 1000 for r in rows]
    engine = [(r["engine:first_token"] - r["engine:start"]) / 1000 for r in rows]
    lines += [f"| **fabric TTFT (client:stream → client:first_chunk)** | **{statistics.median(total):.0f}** | {_p90(total):.0f} |",
              f"| engine start → first token, through the fabric | {statistics.median(engine):.0f} | {_p90(engine):.0f} |",
              f"| direct TTFT (generate() → first delta) | {statistics.median(direct) * 1e6:.0f} | {_p90([x * 1e6 for x in direct]):.0f} |",
              f"| **fabric TTFT − direct TTFT (p50s)** | **{statistics.median(total) - statistics.median(direct) * 1e6:.0f}** | |"]
    return "\n".join(lines)


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)] if values else 0.0


def _cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of a process so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_chunk(requests: int = 96, tokens: int = 128) -> str:
    """CPU each process spends per streamed chunk: the simulated engine with zero delays
    (so the engine costs nothing), 8 streams, a chunk per token."""
    from fabric.client import Client
    from workers.config import WorkerConfig
    from workers.sim_engine import SimEngine, SimParams
    from workers.worker import Worker

    with NatsServer() as server:
        group = ProcessGroup()
        router = group.spawn("router", component_command("router", "--nats-url", server.url))
        engine = SimEngine(SimParams(capacity=8, time_scale=0.0))
        worker = Worker(WorkerConfig(nats_url=server.url, model="general", replica="r0",
                                     engine="sim", max_inflight=8, fetch_batch=8,
                                     max_queue_delay=0.0), engine)
        task = asyncio.ensure_future(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 60)
            client = await Client.connect(server.url)
            await served(client)
            gate = asyncio.Semaphore(8)
            chunks = 0

            async def one(i: int) -> None:
                nonlocal chunks
                async with gate:
                    async for _ in client.stream(request(i, tokens), timeout=60):
                        chunks += 1

            await asyncio.gather(*(one(i) for i in range(16)))  # warm up
            chunks = 0
            assert server.process is not None
            pids: dict[str, int | str] = {"client + worker": "self", "nats-server": server.process.pid,
                                          "router": router.pid}
            before = {k: _cpu_seconds(p) for k, p in pids.items()}
            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(requests)))
            wall = time.perf_counter() - started
            used = {k: _cpu_seconds(p) - before[k] for k, p in pids.items()}
            await client.close()
        finally:
            worker.stop()
            await asyncio.wait_for(task, 60)
            group.stop()
    per = ", ".join(f"{k} {v / chunks * 1e6:.0f}" for k, v in used.items())
    return (f"{chunks} chunks in {wall:.2f} s (8 streams, {tokens} tokens each, sim engine with "
            f"zero delays); CPU per chunk, µs: {per}; load average {os.getloadavg()[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--load", type=int, default=0,
                        help="then this many requests 8 at a time (64 tokens): the refill")
    parser.add_argument("--cpu-per-chunk", action="store_true",
                        help="instead: CPU per streamed chunk of each process (client + worker, "
                             "nats-server, router)")
    parser.add_argument("--router-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.router_child:
        return router_child(args.nats_url, args.out)
    if args.cpu_per_chunk:
        print(uvloop.run(cpu_per_chunk()))
        return 0
    load = os.getloadavg()[0]
    rows, direct = uvloop.run(run(args.requests, args.load))
    print(f"load average at start {load:.2f}")
    print(report(rows, direct))
    return 0


if __name__ == "__main__":
    sys.exit(main())
