"""Trace replay: loading and expanding traces, the offline simulator, the CLI, a live run."""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path

import pytest

from fabric.cli import main
from fabric.replay.engine import BlockLRU, ServiceModel, SimReplica, SimRequest
from fabric.replay.live import drive
from fabric.replay.simulate import ReplayConfig, ReplayError, ceiling_hit_rate, replay
from fabric.replay.trace import (
    BlockText,
    HotTenant,
    TraceError,
    TraceRecord,
    arrival_seconds,
    chat_request,
    hot_tenant_trace,
    read_trace,
)
from router.context import PREFIX_BLOCK_CHARS, build_context

MOONCAKE = Path(__file__).resolve().parents[1].parent / "shared/data/traces/mooncake_conversation.jsonl"
needs_trace = pytest.mark.skipif(not MOONCAKE.exists(), reason="the Mooncake trace is not here")


def record(ts: int, ids: list[int], out: int = 20, **extra: object) -> TraceRecord:
    return TraceRecord(timestamp=ts, input_length=len(ids) * 512 - 100, output_length=out,
                       hash_ids=ids, **extra)  # type: ignore[arg-type]


def test_a_bad_trace_line_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
                    '{"timestamp": "soon"}\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:2"):
        read_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_blocks_expand_to_router_blocks_one_to_one():
    blocks = BlockText()
    assert all(len(blocks.block(i)) == PREFIX_BLOCK_CHARS for i in (0, 1, 17, 10**9))
    assert blocks.block(5) == BlockText().block(5)
    a = build_context(chat_request(record(0, [0, 1, 2, 3]), blocks))
    b = build_context(chat_request(record(0, [0, 1, 2, 9, 4]), blocks))
    c = build_context(chat_request(record(0, [0, 1, 2, 3], system_blocks=2), blocks))
    assert len(a.prefix_hashes) == 4 and len(b.prefix_hashes) == 5  # a hash per trace block
    assert a.prefix_hashes[:3] == b.prefix_hashes[:3]  # equal ids, equal hashes ...
    assert a.prefix_hashes[3] != b.prefix_hashes[3]  # ... and the first different id differs
    assert len(c.prefix_hashes) == 4


def test_quantised_timestamps_are_spread_over_their_tick():
    records = [record(t, [i]) for i, t in enumerate((0, 0, 0, 3000, 6000, 6000))]
    assert arrival_seconds(records) == [0.0, 1.0, 2.0, 3.0, 6.0, 7.5]
    assert arrival_seconds(records, spread=False) == [0.0, 0.0, 0.0, 3.0, 6.0, 6.0]


def test_hot_tenant_shares_one_system_prompt_and_sessions_grow():
    spec = HotTenant(seconds=300)
    records = hot_tenant_trace(spec)
    system = list(range(spec.system_blocks))
    share = sum(r.hash_ids[: spec.system_blocks] == system for r in records) / len(records)
    assert 0.6 < share < 0.9
    by_session: dict[str, list[TraceRecord]] = {}
    for r in records:
        by_session.setdefault(r.session_id or "", []).append(r)
    multi = [turns for turns in by_session.values() if len(turns) > 1]
    assert multi
    for turns in multi:  # every turn extends the previous one's prompt
        for before, after in itertools.pairwise(turns):
            assert after.hash_ids[: len(before.hash_ids)] == before.hash_ids
            assert len(after.hash_ids) > len(before.hash_ids)
    assert records == hot_tenant_trace(spec)  # deterministic
    assert [r.timestamp for r in records] == sorted(r.timestamp for r in records)


def test_a_cached_prefix_shortens_time_to_first_token():
    model = ServiceModel(capacity=4)
    areas: list[float] = []
    replica = SimReplica(0, model, BlockLRU(100), shared=collections.deque(),
                         windows=areas, window_seconds=10.0, weigh=lambda r, c: r.input_length)
    cold = SimRequest(0, 0.0, 4096, 5, [1, 2, 3, 4, 5, 6, 7, 8])
    replica.enqueue(cold, 0.0)
    replica.finish(100.0)
    warm = SimRequest(1, 100.0, 4096, 5, [1, 2, 3, 4, 5, 6, 7, 8])
    replica.enqueue(warm, 100.0)
    replica.finish(200.0)
    assert cold.hit_blocks == 0 and warm.hit_blocks == 8
    cold_ttft, warm_ttft = cold.first_token - cold.arrival, warm.first_token - warm.arrival
    assert cold_ttft == pytest.approx(4096 * model.prefill_seconds_per_token)
    assert warm_ttft == pytest.approx(1 * model.prefill_seconds_per_token)
    assert cold.done - cold.first_token == pytest.approx(4 * model.decode_step(1))


def test_replay_rejects_bad_settings():
    with pytest.raises(ReplayError, match="policy"):
        replay([record(0, [1])], ReplayConfig(policy="magic"))
    with pytest.raises(ReplayError, match="replicas"):
        replay([record(0, [1])], ReplayConfig(replicas=0))


@needs_trace
def test_affinity_beats_round_robin_on_a_slice_of_mooncake():
    trace = read_trace(MOONCAKE, 800)
    config = ReplayConfig(replicas=4, cache_blocks=2048, speed=2.0)
    affinity = replay(trace, config)
    rr = replay(trace, ReplayConfig(replicas=4, cache_blocks=2048, speed=2.0, policy="round-robin"))
    assert affinity.served == rr.served == len(trace)
    assert affinity.ceiling == rr.ceiling == ceiling_hit_rate(trace, 4 * 2048)
    assert rr.hit_rate < affinity.hit_rate <= affinity.ceiling + 1e-9
    assert affinity.of_ceiling > 0.85  # the figure itself is bench/replay.py's (full trace)
    assert affinity.ttft_mean < rr.ttft_mean
    assert replay(trace, config).hit_rate == affinity.hit_rate  # deterministic
    three = replay(trace, ReplayConfig(replicas=4, cache_blocks=2048, speed=2.0, routers=3))
    assert abs(three.hit_rate - affinity.hit_rate) < 0.03


def test_hot_tenant_load_stays_bounded_offline():
    trace = hot_tenant_trace(HotTenant(seconds=200))
    result = replay(trace, ReplayConfig(replicas=4, cache_blocks=1024, speed=2.5))
    assert result.of_ceiling > 0.9
    assert result.load_max_over_mean < 1.5
    spread = {k: v for k, v in result.cache_classes.items() if v}
    assert spread.get("session_sticky", 0) > spread.get("cold", 0)


def test_cli_replays_a_trace_file_and_prints_json(tmp_path, capsys):
    path = tmp_path / "hot.jsonl"
    assert main(["replay", "--hot-tenant", "--hot-seconds", "60", "--write-trace", str(path)]) == 0
    assert len(read_trace(path)) > 10
    code = main(["replay", str(path), "--replicas", "3", "--cache-blocks", "512", "--speed", "2",
                 "--policy", "all", "--json", "--quiet"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in results] == ["affinity", "round-robin", "random", "least-loaded"]
    assert all(0 <= r["hit_rate"] <= r["ceiling"] + 1e-9 for r in results)
    assert main(["replay", str(tmp_path / "nope.jsonl")]) == 2
    assert main(["replay", str(path), "--speed", "fast"]) == 2
    assert "--speed" in capsys.readouterr().err


async def test_live_replay_through_a_running_fabric(fabric, client):
    await fabric.router()
    for replica in ("r0", "r1"):
        await fabric.worker("general", replica)
    await fabric.wait_for_replicas(2)
    # Three conversations of three turns each: later turns repeat earlier prompts.
    records = [record(t * 100, [c * 100 + k for k in range(2 + turn)], out=3)
               for t, (c, turn) in enumerate((c, turn) for turn in range(3) for c in range(3))]
    result = await drive(records, client, speed=1.0, timeout=20)
    assert result.answered == len(records) and not result.errors
    assert result.cached_tokens > 0  # the later turns found their prefix where it was
    assert result.replicas_used >= 1
