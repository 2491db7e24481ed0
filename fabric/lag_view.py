"""The ``slm-fabric lag`` table: pure formatting of lag snapshots and their trend.

No I/O and no clock: snapshots come in (each carries its own time), text goes out, so the
view is tested with hand-made snapshots.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from fabric.lag import ConsumerLag, LagSnapshot

_SPARKS = "▁▂▃▄▅▆▇█"
Key = tuple[str, str]  # (stream, consumer)


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest (all-zero stays at the floor)."""
    top = max(values, default=0)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, round(v / top * (len(_SPARKS) - 1)))] for v in values)


def backlog_rate(points: list[tuple[float, int]]) -> float | None:
    """Change of backlog per second from the first to the last point; None with one point."""
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    (t0, b0), (t1, b1) = points[0], points[-1]
    return (b1 - b0) / (t1 - t0)


def format_trend(points: list[tuple[float, int]]) -> str:
    rate = backlog_rate(points)
    spark = sparkline([b for _, b in points])
    if rate is None:
        return spark
    if abs(rate) < 0.05:
        return f"{spark} steady"
    arrow = "▲" if rate > 0 else "▼"
    return f"{spark} {arrow}{rate:+.1f}/s"


def _row_sort_key(c: ConsumerLag) -> tuple[int, str, int, str, str]:
    # Work consumers first, by model; a model's shared .any queue after its replicas.
    return (0 if c.model else 1, c.model, 1 if c.replica == "any" else 0, c.replica, c.consumer)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: range) -> list[str]:
    """Aligned columns; the ``right`` ones (numbers) are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), *(line(r) for r in rows)]


@dataclass
class LagView:
    """Keeps the last ``history`` backlogs of each consumer, and renders the table."""

    history: int = 12
    _points: dict[Key, deque[tuple[float, int]]] = field(default_factory=dict)

    def update(self, snapshot: LagSnapshot) -> None:
        seen = set()
        for c in snapshot.consumers:
            key = (c.stream, c.consumer)
            seen.add(key)
            self._points.setdefault(key, deque(maxlen=self.history)).append((snapshot.taken_at, c.backlog))
        for gone in set(self._points) - seen:  # a consumer deleted since: forget it
            del self._points[gone]

    def trend(self, stream: str, consumer: str) -> float | None:
        return backlog_rate(list(self._points.get((stream, consumer), ())))

    def render(self, snapshot: LagSnapshot) -> str:
        """The consumer table (one row per model and replica), then the streams."""
        rows = []
        for c in sorted(snapshot.consumers, key=_row_sort_key):
            model = c.model or f"{c.stream}/{c.consumer}"
            rows.append((model, c.replica or "-", str(c.pending), str(c.ack_pending), str(c.redelivered),
                         str(c.waiting), format_age(c.oldest_pending_age),
                         format_trend(list(self._points.get((c.stream, c.consumer), ())))))
        lines = [f"slm-fabric lag · prefix {snapshot.prefix} · {len(snapshot.streams)} streams, "
                 f"{len(snapshot.consumers)} consumers"]
        if rows:
            lines += _table(("MODEL", "REPLICA", "PENDING", "IN FLIGHT", "REDELIVERED", "WAITING",
                             "OLDEST PENDING", "TREND (backlog)"), rows, right=range(2, 7))
        else:
            lines.append("no consumers yet: start a worker")
        stream_rows = [(s.stream, str(s.messages), format_bytes(s.bytes), str(s.consumers),
                        format_age(s.oldest_message_age)) for s in snapshot.streams]
        lines.append("")
        if stream_rows:
            lines += _table(("STREAM", "MESSAGES", "BYTES", "CONSUMERS", "OLDEST"), stream_rows, right=range(1, 5))
        else:
            lines.append(f"no streams under prefix {snapshot.prefix!r}: is a router running?")
        return "\n".join(lines)
