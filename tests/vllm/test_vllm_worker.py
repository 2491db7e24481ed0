"""The worker on a real vLLM engine (tiny random Llama, CPU) and a real nats-server.

Requests name the model explicitly: the router's classifier is not under test here.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from fabric.client import Client, FabricError, chat
from subjects import codec
from subjects.messages import ChatMessage, ChatRequest
from tests.conftest import wait_until
from tests.vllm.conftest import VLLM_WARNINGS, VllmFabric

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module"), *VLLM_WARNINGS]

YES_NO = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


async def test_tokens_stream_through_the_fabric(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    chunks = [c async for c in vllm_client.stream(chat("Tell me about the sea.", model="general", max_tokens=12, temperature=0.0), timeout=60)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    final = chunks[-1]
    assert final.final and final.finish_reason == "length"
    assert final.usage is not None and final.usage.completion_tokens == 12
    assert final.usage.prompt_tokens > 5  # the chat template's tags and the prompt
    assert (final.model, final.replica) == ("general", "r0")
    assert len(chunks) > 1  # streamed, not one blob


async def test_cancel_aborts_the_generation_inside_vllm(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    request = chat("Count to a thousand.", model="general", max_tokens=1500, id="cancel-me-1", temperature=0.0)
    chunks = []
    async for chunk in vllm_client.stream(request, timeout=60):
        chunks.append(chunk)
        if len(chunks) == 2:
            await vllm_client.cancel("cancel-me-1")
    final = chunks[-1]
    assert final.finish_reason == "abort"
    assert final.usage is not None and final.usage.completion_tokens < 1500
    await wait_until(lambda: vllm_fabric.engine.stats().running == 0, 10)


async def test_json_schema_request_returns_valid_json(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    request = chat("Is the sky blue? Answer in JSON.", model="general", max_tokens=64,
                   response_format={"type": "json_schema", "json_schema": {"name": "yes_no", "schema": YES_NO}})
    answer = await vllm_client.complete(request, timeout=60)
    assert answer.finish_reason == "stop", answer  # the grammar ended it, not max_tokens
    assert json.loads(answer.text)["answer"] in ("yes", "no")


async def test_json_object_request_returns_a_json_object(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    request = chat("Give me a JSON object.", model="general", max_tokens=48, temperature=0.0,
                   response_format={"type": "json_object"})
    answer = await vllm_client.complete(request, timeout=60)
    if answer.finish_reason == "stop":  # a random model may still be inside the object at 48 tokens
        assert isinstance(json.loads(answer.text), dict)
    else:
        assert answer.text.lstrip().startswith("{")


async def test_second_request_with_a_shared_prefix_reports_cached_tokens(
        vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    system = "You are a careful assistant for the fleet. Answer briefly and precisely. " * 8
    first, second = (ChatRequest(messages=[ChatMessage(role="system", content=system),
                                           ChatMessage(role="user", content=question)],
                                 model="general", max_tokens=4)
                     for question in ("What is a queue?", "What is a stream?"))
    a = await vllm_client.complete(first, timeout=60)
    b = await vllm_client.complete(second, timeout=60)
    assert a.cached_tokens < 32  # nothing of this system prompt was cached before
    assert b.cached_tokens >= 64  # whole 32-token blocks of the shared system prompt
    assert b.cached_tokens < b.prompt_tokens


async def test_heartbeat_reports_vllm_load(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    js = vllm_client.nc.jetstream()
    kv = await js.key_value(vllm_client.names.replica_bucket)
    await wait_until(lambda: vllm_fabric.engine.stats().prefix_hit_rate > 0, 10)
    fresh_after = time.time()

    beat = None

    async def latest() -> bool:
        nonlocal beat
        entry = await kv.get(vllm_client.names.replica_key("general", "r0"))
        beat = codec.decode_heartbeat(entry.value)
        return beat.sent_at > fresh_after

    deadline = time.monotonic() + 5
    while not await latest():
        assert time.monotonic() < deadline, "no fresh heartbeat"
        await asyncio.sleep(0.1)
    assert beat is not None
    assert beat.engine == "vllm" and beat.warm and not beat.draining
    assert beat.prefix_hit_rate > 0  # from vLLM's stat logger (the shared-prefix test hit)
    assert beat.capacity == 8


async def test_deadline_mid_generation_aborts_and_answers_deadline_exceeded(
        vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    request = chat("Write forever.", model="general", max_tokens=1800, temperature=0.0,
                   deadline=time.time() + 1.5)
    with pytest.raises(FabricError) as info:
        async for _ in vllm_client.stream(request, timeout=60):
            pass
    assert info.value.code == "deadline_exceeded"
    assert "during generation" in info.value.message
    await wait_until(lambda: vllm_fabric.engine.stats().running == 0, 10)


async def test_invalid_sampling_value_is_a_bad_request(vllm_fabric: VllmFabric, vllm_client: Client) -> None:
    with pytest.raises(FabricError) as info:
        await vllm_client.complete(chat("hi", model="general", max_tokens=4, temperature=-1.0), timeout=60)
    assert info.value.code == "bad_request"
    assert "temperature" in info.value.message
    # …and the engine keeps serving.
    answer = await vllm_client.complete(chat("hi again", model="general", max_tokens=3), timeout=60)
    assert answer.completion_tokens >= 1
