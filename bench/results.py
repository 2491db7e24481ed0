"""Shared helpers for benchmarks: the machine line, percentiles, and results.md sections.

Each benchmark owns one section of bench/results.md between ``<!-- name:start -->`` and
``<!-- name:end -->`` markers and rewrites only that, so benchmarks can run separately.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from fabric.stats import percentile

__all__ = ["machine", "percentile", "write_section"]

RESULTS = Path(__file__).with_name("results.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, "
            f"{platform.system()} {platform.release()}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by `make bench`; each section by its own script.\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
