"""The offline model of one replica: an LRU block cache and a step-based service time.

The same model as ``workers/sim_engine.py`` (which runs it in real time for the live
fabric), stepped here in simulated time so a 12,000-request trace replays in seconds:

* continuous batching: the engine runs *steps*; a step prefills the sequences admitted
  at its start and decodes one token of every sequence already running;
* a step lasts ``uncached prompt tokens × prefill_seconds_per_token`` plus, when any
  sequence is decoding, ``decode_seconds_per_token × (1 + batch_slowdown × (batch − 1))``;
* at most ``capacity`` sequences run; the rest wait in the replica's own queue (the
  JetStream subject), or in the model's shared ``.any`` queue, which a replica pulls
  from only when its own queue is empty;
* a sequence's first token comes out at the end of its prefill step (its TTFT);
* a per-replica LRU of prompt blocks (the trace's 512-token blocks): a prompt's leading
  blocks that are cached are not prefilled (vLLM always computes the last token).

Runs of identical pure-decode steps are folded into one epoch (nothing can change inside
one), so the cost is per event, not per token.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from fabric.replay.trace import TRACE_BLOCK_TOKENS


class ServiceModel(msgspec.Struct, frozen=True, kw_only=True):
    """Defaults are workers.sim_engine.SimParams' (a 0.5–3B model on one datacentre GPU)."""

    capacity: int = 8
    prefill_seconds_per_token: float = 0.000025
    decode_seconds_per_token: float = 0.0055
    batch_slowdown: float = 0.05
    block_tokens: int = TRACE_BLOCK_TOKENS

    def decode_step(self, batch: int) -> float:
        if batch <= 0:
            return 0.0
        return self.decode_seconds_per_token * (1.0 + self.batch_slowdown * (batch - 1))


class BlockLRU:
    """The replica's prefix cache over block ids; a block hits only if all before it did."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def peek(self, block_ids: list[int]) -> int:
        """Leading blocks cached right now, touching nothing."""
        blocks = self._blocks
        hit = 0
        for b in block_ids:
            if b not in blocks:
                break
            hit += 1
        return hit

    def lookup_and_insert(self, block_ids: list[int]) -> int:
        """Leading blocks already cached; then all of them become most recently used."""
        hit = self.peek(block_ids)
        blocks = self._blocks
        move = blocks.move_to_end
        for b in block_ids:
            if b in blocks:
                move(b)
            else:
                blocks[b] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        return hit


@dataclass(eq=False, slots=True)
class SimRequest:
    index: int
    arrival: float  # simulated seconds when the router published it
    input_length: int
    output_length: int
    blocks: list[int]
    weight: int = 0  # the load it puts on its replica (see SimReplica.weigh)
    own: bool = True  # on the replica's own queue (False: pulled from .any)
    replica: int = -1
    hit_blocks: int = 0
    first_token: float = -1.0
    done: float = -1.0
    remaining: int = 0


@dataclass(eq=False)
class SimReplica:
    index: int
    model: ServiceModel
    cache: BlockLRU
    shared: deque[SimRequest]  # the model's .any queue, shared by every replica
    windows: list[float]  # integrated outstanding weight per load window (shared list per replica)
    window_seconds: float
    # Load of a request given the prompt blocks its replica holds: the same token weight
    # the router charges (router.replicas.request_weight), measured on the replica's side.
    weigh: Callable[[SimRequest, int], int]
    queue: deque[SimRequest] = field(default_factory=deque)
    running: list[SimRequest] = field(default_factory=list)
    epoch_end: float = -1.0  # < 0: idle
    _admitted: list[SimRequest] = field(default_factory=list)
    _steps: int = 0  # decode steps in the current epoch
    _outstanding: int = 0  # weight queued here + running here
    _since: float = 0.0
    own_outstanding: int = 0  # messages on the replica's own subject (what a sample reads)
    finished: list[SimRequest] = field(default_factory=list)
    slot_seconds: float = 0.0  # ∫ running sequences dt: occupancy = this / (capacity × time)

    # ---- load bookkeeping ---------------------------------------------------------------
    def _integrate(self, now: float) -> None:
        start = self._since
        if now <= start:
            return
        weight = self._outstanding
        if weight:
            size = self.window_seconds
            windows = self.windows
            while start < now:
                w = int(start // size)
                end = min(now, (w + 1) * size)
                while len(windows) <= w:
                    windows.append(0.0)
                windows[w] += weight * (end - start)
                start = end
        self._since = now

    def _add_load(self, now: float, weight: int) -> None:
        self._integrate(now)
        self._outstanding += weight

    # ---- arrivals -------------------------------------------------------------------------
    def enqueue(self, request: SimRequest, now: float) -> None:
        request.replica = self.index
        self.own_outstanding += 1
        request.weight = self.weigh(request, self.cache.peek(request.blocks))
        self._add_load(now, request.weight)
        self.queue.append(request)
        if self.epoch_end < 0:
            self._start_epoch(now, now)

    @property
    def idle(self) -> bool:
        return self.epoch_end < 0

    def wake(self, now: float) -> None:
        """Start stepping if idle and there is work (a .any arrival)."""
        if self.epoch_end < 0 and (self.queue or self.shared):
            self._start_epoch(now, now)

    # ---- stepping -------------------------------------------------------------------------
    def advance(self, until: float) -> None:
        """Apply every epoch that ends at or before ``until``; start the next ones."""
        while 0 <= self.epoch_end <= until:
            end = self.epoch_end
            self._finish_epoch(end)
            self._start_epoch(end, until)

    def _finish_epoch(self, end: float) -> None:
        steps = self._steps
        for request in self._admitted:
            request.first_token = end
            request.remaining = request.output_length - 1
        admitted = set(map(id, self._admitted))
        still: list[SimRequest] = []
        for request in self.running:
            if id(request) not in admitted:
                request.remaining -= steps
            if request.remaining <= 0:
                request.done = end
                self._add_load(end, -request.weight)
                if request.own:
                    self.own_outstanding -= 1
                self.finished.append(request)
            else:
                still.append(request)
        self.running = still
        self._admitted = []

    def _start_epoch(self, now: float, horizon: float) -> None:
        model = self.model
        admitted: list[SimRequest] = []
        while len(self.running) < model.capacity and (self.queue or self.shared):
            if self.queue:
                request = self.queue.popleft()
            else:
                request = self.shared.popleft()
                request.own = False
                request.replica = self.index
                request.weight = 0
            hit = self.cache.lookup_and_insert(request.blocks)
            request.hit_blocks = hit
            weight = self.weigh(request, hit)
            self._add_load(now, weight - request.weight)
            request.weight = weight
            admitted.append(request)
            self.running.append(request)
        decoding = len(self.running) - len(admitted)
        if admitted:
            prefill = 0
            for request in admitted:
                cached = min(request.hit_blocks * model.block_tokens, request.input_length - 1)
                prefill += request.input_length - cached
            self._admitted = admitted
            self._steps = 1
            self.epoch_end = now + prefill * model.prefill_seconds_per_token + model.decode_step(decoding)
            self.slot_seconds += (self.epoch_end - now) * len(self.running)
            return
        if not self.running:
            self.epoch_end = -1.0
            return
        # Pure decode: identical steps until the first sequence finishes, or until the
        # first step boundary at or after ``horizon`` (the next outside event may admit).
        step = model.decode_step(decoding)
        steps = min(r.remaining for r in self.running)
        if len(self.running) < model.capacity and horizon != math.inf:  # an arrival could join
            steps = min(steps, max(1, math.ceil((horizon - now) / step)))
        self._steps = max(steps, 1)
        self.epoch_end = now + self._steps * step
        self.slot_seconds += (self.epoch_end - now) * len(self.running)

    def finish(self, until: float) -> None:
        """Run to the end of all work (the trace is over)."""
        self.advance(until)
        self._integrate(until)
