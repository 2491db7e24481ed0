"""Least privilege, proven on a real nats-server running the config `nats-config` writes.

The fabric works under it (router, worker, client, durable ingress, monitor: no permission
violation in the server's log), and it refuses what each role must not do: a client
cannot publish work, read another client's inbox or touch JetStream; a worker cannot
publish to the ingress or read client inboxes; the monitor cannot change anything.
Passwords come from the server's environment (the default) or from secret files; TLS is
optional and needs no change in the components.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
import yaml

from fabric.client import Client, chat
from fabric.local import NatsServer, ProcessGroup, component_command, nats_server_binary
from fabric.security import ROLES, Plan, Tls, password_variable, render
from subjects.names import Names
from tests.conftest import Fabric, eventually, wait_until

CLIENTS = ("alice", "bob")
MODELS = ("general",)


class Secure:
    """A server running the generated config, and how to connect as each user."""

    def __init__(self, server: NatsServer, names: Names, passwords: dict[str, str]) -> None:
        self.server = server
        self.names = names
        self.passwords = passwords

    def url(self, user: str, password: str | None = None, scheme: str = "nats") -> str:
        return f"{scheme}://{user}:{password or self.passwords[user]}@127.0.0.1:{self.server.client_port}"

    def violations(self) -> list[str]:
        return [line for line in self.server.log_lines if "Violation" in line]


def start_with_env_passwords(config: Path, passwords: dict[str, str]) -> NatsServer:
    """nats-server resolves $SLM_NATS_PASSWORD_* from its environment at start."""
    saved = dict(os.environ)
    os.environ.update({password_variable(u): p for u, p in passwords.items()})
    try:
        return NatsServer(config_file=str(config)).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    names = Names("sec" + uuid.uuid4().hex[:6])
    passwords = {u: secrets.token_hex(12) for u in [*ROLES, *CLIENTS]}
    config = tmp_path_factory.mktemp("nats") / "nats.conf"
    text = render(Plan(names, MODELS, CLIENTS, http_port=0))
    assert not any(p in text for p in passwords.values())  # no secret in the file
    config.write_text(text)
    server = start_with_env_passwords(config, passwords)
    try:
        yield Secure(server, names, passwords)
    finally:
        server.stop()


@pytest.fixture
async def fleet(secure: Secure) -> AsyncIterator[tuple[Fabric, Fabric]]:
    routers = Fabric(secure.url("router"), secure.names.prefix)
    workers = Fabric(secure.url("worker"), secure.names.prefix)
    await routers.router(models=MODELS)
    await workers.worker("general", "r0")
    await wait_until(lambda: len(routers.routers[0].table) == 1, 10)
    yield routers, workers
    await workers.stop()
    await routers.stop()


class Errors:
    """What the server refused, as nats-py reports it to the connection's error callback."""

    def __init__(self) -> None:
        self.seen: list[str] = []

        async def callback(exc: Exception) -> None:  # nats-py wants a coroutine function
            self.seen.append(str(exc))

        self.callback = callback

    def permission(self, what: str) -> bool:
        return any("permissions violation" in e and what.lower() in e.lower() for e in self.seen)


async def connect(secure: Secure, user: str) -> tuple[nats.NATS, Errors]:
    errors = Errors()
    inbox = secure.names.client_inbox_prefix(user) if user in CLIENTS else "_INBOX"
    nc = await nats.connect(secure.url(user), error_cb=errors.callback, inbox_prefix=inbox,
                            allow_reconnect=False)
    return nc, errors


pytestmark = pytest.mark.timeout(120)


async def test_the_fabric_runs_under_least_privilege_without_a_violation(secure, fleet):
    before = len(secure.violations())
    alice = await Client.connect(secure.url("alice"), secure.names.prefix)
    try:
        answer = await alice.complete(chat("Tell me about the sea.", model="general", max_tokens=4),
                                      timeout=10)
        assert answer.finish_reason == "length"
        durable = await alice.complete(chat("And about rivers.", model="general", max_tokens=3),
                                       timeout=10, durable=True)
        assert durable.finish_reason == "length"
    finally:
        await alice.close()
    monitor, _ = await connect(secure, "monitor")
    info = await monitor.jetstream().stream_info(secure.names.work_stream("general"))
    assert info.config.name == secure.names.work_stream("general")
    await monitor.close()
    assert secure.violations()[before:] == []


async def test_a_client_cannot_publish_work_read_another_inbox_or_touch_jetstream(secure, fleet):
    names = secure.names
    alice, errors = await connect(secure, "alice")
    monitor, _ = await connect(secure, "monitor")
    work_stream = names.work_stream("general")
    stored = (await monitor.jetstream().stream_info(work_stream)).state.last_seq
    try:
        # Work behind the router's back.
        await alice.publish(names.work("general", "r0"), b"injected")
        # Another client's tokens, and the services' own API replies.
        spy = await alice.subscribe(f"{names.client_inbox_prefix('bob')}.>")
        await alice.subscribe("_INBOX.>")
        # JetStream: read a stream, delete one.
        await alice.publish(f"$JS.API.STREAM.DELETE.{work_stream}", b"")
        with pytest.raises(nats.errors.TimeoutError):
            await alice.jetstream(timeout=0.5).stream_info(work_stream)
        await alice.flush()
        await wait_until(lambda: len(errors.seen) >= 5, 5)
        assert errors.permission(f'publish to "{names.work("general", "r0")}"')
        assert errors.permission(f"subscription to \"{names.client_inbox_prefix('bob')}.>\"")
        assert errors.permission('subscription to "_inbox.>"')
        assert errors.permission(f'publish to "$JS.API.STREAM.DELETE.{work_stream}"')
        assert errors.permission(f'publish to "$JS.API.STREAM.INFO.{work_stream}"')
        # Bob is served; Alice heard none of it; nothing was queued or deleted.
        bob = await Client.connect(secure.url("bob"), names.prefix)
        try:
            await bob.complete(chat("hello", model="general", max_tokens=2), timeout=10)
        finally:
            await bob.close()
        assert spy.pending_msgs == 0 and spy.delivered == 0
        after = await monitor.jetstream().stream_info(work_stream)
        assert after.state.last_seq == stored + 1  # bob's request, not the injected one
    finally:
        await alice.close()
        await monitor.close()


async def test_a_worker_cannot_publish_to_the_ingress_or_read_client_inboxes(secure, fleet):
    routers, _ = fleet
    router = routers.routers[0]
    worker, errors = await connect(secure, "worker")
    handled = router.routed + router.rejected
    try:
        await worker.publish(secure.names.ingress, b'{"messages": [{"role": "user", "content": "hi"}]}',
                             reply=f"{secure.names.inbox_prefix}.x")
        await worker.publish(secure.names.durable_ingress, b"{}")
        await worker.subscribe(f"{secure.names.inbox_prefix}.>")
        await worker.flush()
        await wait_until(lambda: len(errors.seen) >= 3, 5)
        assert errors.permission(f'publish to "{secure.names.ingress}"')
        assert errors.permission(f'publish to "{secure.names.durable_ingress}"')
        assert errors.permission(f'subscription to "{secure.names.inbox_prefix}.>"')
        assert router.routed + router.rejected == handled
    finally:
        await worker.close()


async def test_the_monitor_reads_but_changes_nothing(secure, fleet):
    monitor, errors = await connect(secure, "monitor")
    stream = secure.names.work_stream("general")
    try:
        infos = await monitor.jetstream().streams_info()
        assert stream in {i.config.name for i in infos}
        await monitor.publish(secure.names.ingress, b"{}")
        await monitor.publish(f"$JS.API.STREAM.PURGE.{stream}", b"")
        await monitor.flush()
        await wait_until(lambda: len(errors.seen) >= 2, 5)
        assert errors.permission(f'publish to "{secure.names.ingress}"')
        assert errors.permission(f'publish to "$JS.API.STREAM.PURGE.{stream}"')
    finally:
        await monitor.close()


async def refused(url: str, **options: Any) -> Exception:
    """Connect and expect a refusal; the half-open connection is closed (nats-py leaves it)."""
    nc = nats.NATS()
    try:
        await nc.connect(url, allow_reconnect=False, max_reconnect_attempts=0, **options)
    except Exception as exc:  # what the server or the TLS handshake said
        return exc
    finally:
        await nc.close()
    raise AssertionError(f"{url} was accepted")


async def test_wrong_or_missing_credentials_are_refused(secure):
    for url in (secure.url("alice", password="not-the-password"),
                f"nats://127.0.0.1:{secure.server.client_port}"):
        assert "Authorization Violation" in str(await refused(url))


def test_nats_config_reads_passwords_from_secret_files_and_keeps_the_file_private(tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for user in [*ROLES, "alice"]:
        (secrets_dir / user).write_text(f"pw-{user}\n")
    out = tmp_path / "nats.conf"
    cli = [sys.executable, "-m", "fabric", "nats-config", "--clients", "alice", "--prefix", "demo",
           "--secrets-dir", str(secrets_dir), "-o", str(out)]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert '"pw-router"' in text and '"pw-alice"' in text and "$SLM_NATS_PASSWORD" not in text
    assert out.stat().st_mode & 0o777 == 0o600
    (secrets_dir / "worker").unlink()
    failed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert "no password for user 'worker'" in failed.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_needs_no_change_in_the_components(tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    names = Names("tls" + uuid.uuid4().hex[:6])
    passwords = {u: secrets.token_hex(8) for u in [*ROLES, "client"]}
    config = tmp_path / "nats.conf"
    config.write_text(render(Plan(names, MODELS, ("client",), passwords,
                                  Tls(str(cert), str(key)), http_port=0)))
    server = NatsServer(config_file=str(config)).start()
    group = ProcessGroup()
    try:
        port = server.client_port
        trusted = ssl.create_default_context(cafile=str(ca))
        # The server requires TLS of every client, with a certificate only our CA vouches for.
        info, handshake = await asyncio.to_thread(tls_handshake, port, ssl.create_default_context())
        assert '"tls_required":true' in info
        assert "CERTIFICATE_VERIFY_FAILED" in handshake
        assert (await asyncio.to_thread(tls_handshake, port, trusted))[1] == "ok"
        # Router and worker as processes: only the URL and SSL_CERT_FILE change.
        env = {"SSL_CERT_FILE": str(ca), "SLM_PREFIX": names.prefix, "SLM_MODELS": "general"}
        group.spawn("router", component_command("router"), {
            **env, "SLM_NATS_URL": f"tls://router:{passwords['router']}@127.0.0.1:{port}"})
        group.spawn("worker", component_command("worker", "--model", "general", "--replica", "r0"), {
            **env, "SLM_NATS_URL": f"tls://worker:{passwords['worker']}@127.0.0.1:{port}",
            "SLM_SIM_TIME_SCALE": "0.1"})
        client = await Client.connect(f"tls://client:{passwords['client']}@127.0.0.1:{port}",
                                      names.prefix, tls=trusted)
        try:
            await served(client, 60)
            answer = await client.complete(chat("over TLS", model="general", max_tokens=3), timeout=10)
            assert answer.finish_reason == "length"
        finally:
            await client.close()
        assert not group.failed()
        assert [line for line in server.log_lines if "Violation" in line] == []
    finally:
        group.stop()
        server.stop()


async def served(client: Client, timeout: float) -> None:
    """Until a request is answered (before that: no router or replica yet)."""

    async def answered() -> bool:
        try:
            await client.complete(chat("ping", model="general", max_tokens=1), timeout=2, retries=0)
        except Exception:
            return False
        return True

    await eventually(answered, bool, timeout, step=0.2)


def tls_handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """The server's INFO line (sent in the clear) and how a TLS handshake with it went."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        info = raw.recv(4096).decode()
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return info, "ok"
        except ssl.SSLError as exc:
            return info, str(exc)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl, ~0.1 s)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key",
                                                          "server.csr", "server.pem"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: Any) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "1", "-subj", "/CN=slm-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
        "-days", "1", "-extfile", ext)
    return ca, cert, key


# ---- the compose deployment ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ROLE_OF_COMMAND = {"router": "router", "worker": "worker", "lag": "monitor"}


def _compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def test_compose_secure_override_connects_every_fabric_service_as_its_role():
    base, secure = _compose("compose.yaml"), _compose("compose.secure.yaml")
    for name, service in base["services"].items():
        command = service.get("command") or [""]
        role = ROLE_OF_COMMAND.get(command[0])
        if role is None:
            continue
        url = secure["services"][name]["environment"]["SLM_NATS_URL"]
        assert url.startswith(f"nats://{role}:${{{password_variable(role)}:?"), (name, url)
    nats_service = secure["services"]["nats"]
    config_path = nats_service["command"][-1]
    writer = secure["services"]["nats-config"]["command"]
    assert writer[0] == "nats-config" and writer[-1] == config_path
    assert set(nats_service["environment"]) == {password_variable(u) for u in [*ROLES, "client"]}
    schema_path = ROOT.parent / "shared" / "data" / "schemas" / "compose-spec.json"
    if schema_path.exists():
        errors = list(jsonschema.Draft7Validator(json.loads(schema_path.read_text())).iter_errors(secure))
        assert not errors, [e.message for e in errors]


def test_the_config_the_secure_compose_writes_is_accepted_by_nats_server(tmp_path):
    writer = _compose("compose.secure.yaml")["services"]["nats-config"]["command"]
    out = tmp_path / "nats.conf"
    args = [*writer[:-1], str(out)]
    args[args.index("--store-dir") + 1] = str(tmp_path / "store")
    done = subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, **{password_variable(u): "x" for u in [*ROLES, "client"]}}
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(out)], capture_output=True,
                             text=True, timeout=30, env=env)
    assert checked.returncode == 0, checked.stderr + checked.stdout
