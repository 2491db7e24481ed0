"""How an attempt at one work message maps to JetStream: the one place a worker settles.

| situation                                        | reply to the client              | Outcome | JetStream            |
| ------------------------------------------------ | -------------------------------- | ------- | -------------------- |
| generation finished (or the client cancelled)    | final chunk                      | DONE    | ack                  |
| the engine refused the request as given          | error ``bad_request``            | DONE    | ack                  |
| deadline or max queue delay passed before start  | error ``deadline_exceeded``      | DONE    | ack (never started)  |
| deadline passed during generation                | error ``deadline_exceeded``      | DONE    | ack (engine aborted) |
| engine failed this attempt, deliveries remain    | nothing yet                      | RETRY   | nak with a delay     |
| engine failed on the last delivery               | error ``engine_error``           | DONE    | ack                  |
| message does not decode                          | error ``bad_request`` (if it can)| POISON  | term                 |
| shutdown past the grace period / engine dead     | nothing (another replica answers)| RELEASE | nak, short delay     |
| still generating after ``in_progress_interval``  | (streaming goes on)              | —       | in-progress ack      |

A restart — a JetStream redelivery (``num_delivered > 1``), or work a router moved off a
dead replica's queue after that replica had been given it (the ``Slm-Restarted`` header:
the move is a new message, delivered once) — starts a fresh attempt whose first chunk has
``restarted`` set, so the client drops partial output from the attempt that was lost.
``is_restart`` is the one place that decides it.
"""

from __future__ import annotations

import enum

from nats.aio.msg import Msg

from subjects.names import HEADER_RESTARTED


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    POISON = "poison"
    RELEASE = "release"


def is_restart(msg: Msg) -> bool:
    """Whether an earlier attempt at this work may already have streamed to the client."""
    if msg.metadata.num_delivered > 1:
        return True
    return bool(msg.headers and msg.headers.get(HEADER_RESTARTED))


def after_failure(retryable: bool, deliveries: int, max_deliver: int) -> Outcome:
    """A failed attempt: retry while deliveries remain, else it ends (with an error reply)."""
    return Outcome.RETRY if retryable and deliveries < max_deliver else Outcome.DONE


async def settle(msg: Msg, outcome: Outcome, retry_delay: float, release_delay: float) -> None:
    """Ack, nak or term ``msg`` as ``outcome`` says.

    A release is nak'd with a short delay, not none: a stopping worker still has pull
    requests open for a moment, and an immediate redelivery would land right back on
    them — each bounce spends one of the message's ``max_deliver`` attempts.
    """
    if outcome is Outcome.DONE:
        await msg.ack()
    elif outcome is Outcome.RETRY:
        await msg.nak(delay=retry_delay)
    elif outcome is Outcome.POISON:
        await msg.term()
    else:
        await msg.nak(delay=release_delay)
