"""Decision logs: every model choice with the context it was made from, compactly.

A log is a file of frames, each a 4-byte little-endian length then a msgpack payload:
one LogHeader (which rules and thresholds made the decisions), then DecisionRecords. A
record holds the RoutingContext and the session's warm model — everything the pure model
choice (router.rules.decide_model) reads — and what it chose, so ``replay`` re-runs the
choice and lists any difference. Replica choice depends on live heartbeats and load, which
the log does not hold, so it is recorded for reading but not replayed.

Writing stays off the request path: ``DecisionLog.record`` appends a tuple to a bounded
deque (no encoding, no I/O); ``flush`` encodes and writes the batch, and the router calls
it from a worker thread every ``flush_interval``. When the writer falls behind, records
beyond ``max_pending`` are counted as dropped and logged, never silently lost.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from router.context import BadContext, check_context
from router.rules import ModelChoice, RuleSet, UnknownModel, decide_model
from subjects.messages import DecisionPath, RoutingContext, TaskClass

log = logging.getLogger("slm.router.decisions")

LOG_FORMAT = 1
_LENGTH = struct.Struct("<I")


class LogError(ValueError):
    """Raised when a decision log cannot be read; names the file and the byte offset."""


class LogHeader(msgspec.Struct, frozen=True):
    format: int
    rules_source: str
    rules_digest: str
    thresholds: dict[str, float]
    started_at: float


class DecisionRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    at: float  # router wall clock, Unix seconds
    context: RoutingContext
    warm_model: str  # the session table's answer the choice saw ("" none)
    model: str
    task_class: TaskClass
    path: DecisionPath
    replica: str = ""  # the first replica tried ("" when none was live)


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(LogHeader)
_record_decoder = msgspec.msgpack.Decoder(DecisionRecord)


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class DecisionLog:
    """Appends decisions to a log file in batches, off the request path."""

    def __init__(self, path: Path | str, rules: RuleSet, now: float, max_pending: int = 65536) -> None:
        self.path = Path(path)
        self.dropped = 0
        self.written = 0
        self._pending: deque[tuple[float, RoutingContext, ModelChoice, str]] = deque()
        self._max_pending = max_pending
        self._write_lock = threading.Lock()
        self._header_for(rules, now)

    def _header_for(self, rules: RuleSet, now: float) -> None:
        self._header = frame(_encoder.encode(LogHeader(
            LOG_FORMAT, rules.source, rules.digest, dict(rules.thresholds), now)))
        self._header_due = True

    def rules_changed(self, rules: RuleSet, now: float) -> None:
        """Start a new header: later records were decided by ``rules``."""
        self.flush()
        self._header_for(rules, now)

    def record(self, at: float, ctx: RoutingContext, choice: ModelChoice, replica: str) -> None:
        """Queue one decision (a deque append: no encoding, no I/O)."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append((at, ctx, choice, replica))

    def flush(self) -> int:
        """Encode and append everything queued; returns how many records were written."""
        with self._write_lock:
            batch = []
            while self._pending:
                at, ctx, choice, replica = self._pending.popleft()
                batch.append(frame(_encoder.encode(DecisionRecord(
                    at, ctx, choice.warm_model, choice.model, choice.task_class, choice.path, replica))))
            if not batch and not self._header_due:
                return 0
            with self.path.open("ab") as out:
                if self._header_due:
                    out.write(self._header)
                    self._header_due = False
                out.write(b"".join(batch))
            self.written += len(batch)
            if self.dropped:
                log.error("decision log %s fell behind: %d decisions not logged", self.path, self.dropped)
                self.dropped = 0
            return len(batch)


def read_log(path: Path | str) -> Iterator[LogHeader | DecisionRecord]:
    """Headers and records in file order; raises LogError at the first bad frame."""
    data = Path(path).read_bytes()
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise LogError(f"{path}: truncated frame length at byte {offset}")
        (size,) = _LENGTH.unpack_from(data, offset)
        start = offset + _LENGTH.size
        payload = data[start : start + size]
        if len(payload) != size:
            raise LogError(f"{path}: truncated frame at byte {offset} ({len(payload)} of {size} bytes)")
        try:
            # Headers are msgpack maps, records arrays: the first byte tells them apart.
            item: LogHeader | DecisionRecord = (
                _header_decoder.decode(payload) if _is_map(payload) else _record_decoder.decode(payload))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise LogError(f"{path}: bad frame at byte {offset}: {_name_fields(str(exc))}") from exc
        if isinstance(item, DecisionRecord):
            try:
                check_context(item.context)
            except BadContext as exc:
                raise LogError(f"{path}: bad frame at byte {offset}: context {exc}") from exc
        yield item
        offset = start + size


_RECORD_FIELDS = DecisionRecord.__struct_fields__
_CONTEXT_FIELDS = RoutingContext.__struct_fields__
_CONTEXT_AT = _RECORD_FIELDS.index("context")
_PATH = re.compile(r"\$\[(\d+)\](?:\[(\d+)\])?")


def _name_fields(message: str) -> str:
    """msgspec names array positions (`$[1][0]`); say which field that is."""
    match = _PATH.search(message)
    if not match:
        return message
    outer = int(match.group(1))
    if outer >= len(_RECORD_FIELDS):
        return message
    name = _RECORD_FIELDS[outer]
    if outer == _CONTEXT_AT and match.group(2) is not None and int(match.group(2)) < len(_CONTEXT_FIELDS):
        name = f"context.{_CONTEXT_FIELDS[int(match.group(2))]}"
    return f"{name}: {message}"


def _is_map(payload: bytes) -> bool:
    head = payload[:1]
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


@dataclass(frozen=True, slots=True)
class Mismatch:
    index: int  # record number in the log, from 0
    logged: DecisionRecord
    replayed: str  # "model/task_class/path" or the error the replay raised


@dataclass(slots=True)
class ReplayResult:
    records: int
    headers: list[LogHeader]
    mismatches: list[Mismatch]


def replay(path: Path | str, rules: RuleSet) -> ReplayResult:
    """Re-run the model choice on every logged context with ``rules``."""
    headers: list[LogHeader] = []
    mismatches: list[Mismatch] = []
    count = 0
    for item in read_log(path):
        if isinstance(item, LogHeader):
            headers.append(item)
            continue
        try:
            choice = decide_model(rules, item.context, item.warm_model)
            got = f"{choice.model}/{choice.task_class.name.lower()}/{choice.path.name.lower()}"
            same = (choice.model, choice.task_class, choice.path) == (item.model, item.task_class, item.path)
        except UnknownModel as exc:
            got, same = f"error: {exc}", False
        if not same:
            mismatches.append(Mismatch(count, item, got))
        count += 1
    return ReplayResult(count, headers, mismatches)
