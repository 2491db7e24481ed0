"""A router's loops end on cancel even when Python 3.11's wait_for swallows the cancel.

On 3.11, ``asyncio.wait_for`` returns its result instead of raising CancelledError when
the awaited future completes in the same turn as the cancel. nats-py awaits every request
with it (a JetStream publish, stream_info, a KV watch), so a router loop around one of
them went on after its task group cancelled it, and the router never stopped (a CI hang).
"""

from __future__ import annotations

import asyncio

from router.service import _cancel_requested


async def _swallow_one_cancel(looping_forever: bool) -> asyncio.Task[int]:
    """A loop around wait_for, cancelled in the turn its awaited reply lands."""
    reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    rounds = 0

    async def loop() -> int:
        nonlocal rounds
        while looping_forever or not _cancel_requested():
            rounds += 1
            await asyncio.wait_for(reply if rounds == 1 else asyncio.Event().wait(), 30)
        return rounds

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0)  # the loop is now inside wait_for
    reply.set_result(1)
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    return task


async def test_a_loop_checking_cancel_requested_ends_after_a_swallowed_cancel() -> None:
    task = await _swallow_one_cancel(looping_forever=False)
    assert task.done() and not task.cancelled()
    assert task.result() == 1  # it left at the next check, without another round


async def test_without_the_check_the_swallowed_cancel_leaves_the_loop_running() -> None:
    """The failure the check prevents: the cancel is gone and the loop waits again."""
    task = await _swallow_one_cancel(looping_forever=True)
    try:
        assert not task.done()
        assert task.cancelling() == 1  # asked once; wait_for returned the reply instead
    finally:
        task.cancel()  # a second cancel lands in the next, unfinished wait
        await asyncio.wait({task}, timeout=1)
    assert task.cancelled()
