"""Faults against real processes and a real nats-server: nothing a client sent is lost.

Each test runs one scenario of ``bench/faults.py`` (the script that writes the README's
fault table) with fewer requests: its own nats-server with file storage, routers and
workers as OS processes (a SIGKILL is a real crash), the real client, and a spy that hears
every reply sent to the clients' inboxes.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import faults
from subjects.messages import ErrorCode

pytestmark = pytest.mark.timeout(180)


def assert_nothing_lost(row: faults.Row) -> None:
    assert row.lost == 0, f"lost {row.lost}: {row.lost_ids[:10]}"
    assert row.answered + sum(row.errored.values()) == row.sent


@pytest.fixture(scope="module")
def worker_kill() -> faults.Row:
    """One run for the tests below (a fresh event loop: the scenario owns its processes)."""
    return asyncio.run(faults.worker_kill(n=240, replicas=3, timeout=20.0))


def test_worker_sigkill_mid_generation_redelivers_to_another_replica(worker_kill):
    row = worker_kill
    assert_nothing_lost(row)
    assert row.answered == row.sent, row.errored
    assert row.facts["streaming_on_killed"] > 0  # the kill hit work in progress
    # Those it hit started again elsewhere; the client kept one complete answer each.
    assert row.facts["restarted"] >= row.facts["streaming_on_killed"]
    assert row.duplicated == 0


def test_work_moved_off_a_dead_replica_is_flagged_restarted(worker_kill):
    assert worker_kill.facts["restarted_flagged"] >= worker_kill.facts["restarted"]


async def test_router_sigkill_clients_retry_and_each_request_runs_once():
    row = await faults.router_kill(n=200)
    assert_nothing_lost(row)
    assert row.answered == row.sent, row.errored
    assert row.facts["client_retries"] > 0  # the dead router held requests
    assert row.facts["ran_twice"] == 0
    assert row.facts["work_items_stored"] == row.sent  # de-duplicated: one work item each
    assert row.duplicated == 0


async def test_nats_restart_work_stored_before_is_served_after():
    row = await faults.nats_restart(n=120)
    assert_nothing_lost(row)
    assert row.answered == row.sent, row.errored
    assert row.facts["queued_at_restart"] > 0
    # Not asserted: duplicates. An ack in flight when the server stops can be lost, and
    # JetStream then delivers that work again (at-least-once); the client has returned
    # with the first answer by then. The report counts them.


async def test_nats_crash_loses_nothing():
    row = await faults.nats_crash(n=120)
    assert_nothing_lost(row)
    assert row.answered == row.sent, row.errored
    assert row.facts["queued_at_restart"] > 0


async def test_durable_ingress_serves_requests_published_while_no_router_ran():
    row = await faults.durable_ingress(n=40)
    assert_nothing_lost(row)
    assert row.answered == row.sent == row.facts["stored_while_no_router"]


async def test_burst_is_shed_at_once_and_queues_stay_bounded():
    row = await faults.overload(bursts=2)
    f = row.facts
    assert_nothing_lost(row)
    assert set(row.errored) == {ErrorCode.OVERLOADED.value}
    assert row.errored[ErrorCode.OVERLOADED.value] >= row.sent - 2 * f["capacity"]
    assert f["deepest_queue"] <= f["queue_bound"]
    # Refusals arrive while admitted work is still running: no refusal waited for a slot
    # or a timeout.
    assert f["overloaded_max_ms"] < f["admitted_first_finished_ms"]
    # Bounded queues, bounded memory (a loose leak check over the bursts).
    before, after = f["router_rss_mib"]
    assert after - before < 32
    assert row.duplicated == 0


async def test_work_that_exhausts_its_deliveries_is_dead_lettered_and_the_client_told():
    row = await faults.dead_letter(n=10)
    assert_nothing_lost(row)
    assert row.errored == {ErrorCode.REDELIVERY_EXHAUSTED.value: row.sent}
    assert row.facts["in_dead_letter_stream"] == row.sent
    assert row.facts["left_in_work_queue"] == 0
