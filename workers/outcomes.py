"""How a finished attempt maps to JetStream: the one place a worker acks, naks or terms.

| outcome  | when                                            | JetStream           |
| -------- | ----------------------------------------------- | ------------------- |
| DONE     | final chunk or error reply sent                 | ack                 |
| RETRY    | engine failed this attempt, may succeed again   | nak with a delay    |
| POISON   | the message does not decode                     | term (+ error reply)|
| RELEASE  | shutting down / engine dead: let another take it | nak, no delay       |
"""

from __future__ import annotations

import enum

from nats.aio.msg import Msg


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    POISON = "poison"
    RELEASE = "release"


async def settle(msg: Msg, outcome: Outcome, retry_delay: float) -> None:
    if outcome is Outcome.DONE:
        await msg.ack()
    elif outcome is Outcome.RETRY:
        await msg.nak(delay=retry_delay)
    elif outcome is Outcome.POISON:
        await msg.term()
    else:
        await msg.nak()
