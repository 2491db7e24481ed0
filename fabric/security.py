"""A least-privilege nats-server configuration for the fabric: one user per role.

Pure generation (no I/O): ``render(plan)`` returns the text of a nats-server config file.

| role    | may publish                                             | may subscribe                  |
| ------- | ------------------------------------------------------- | ------------------------------ |
| client  | the ingress (core and durable), cancel                  | its own inboxes only           |
| router  | work and dead-letter subjects, replies to client inboxes, JetStream APIs of the fabric's streams (create, info, get/delete for dead letters, the shared ingress consumer), placements | ingress, placements, max-deliveries advisories, its API replies |
| worker  | replies to client inboxes, the work streams' consumer APIs and acks, heartbeats into the registry bucket | cancel, its API replies and pulls |
| monitor | read-only JetStream APIs (stream/consumer info and lists, message get for queue age) | advisories, its API replies |

Every client user gets its own inbox prefix, ``_INBOX_<prefix>.<user>``; ``fabric.client``
connects with it (from the user in the URL), so no client can read another's tokens.
Nobody but the router may publish to work subjects; nobody but clients to the ingress; no
client may touch ``$JS``. Routers and workers keep nats-py's default ``_INBOX.`` for their
own API replies: clients cannot subscribe there.

Credentials never come from code. By default the config names environment variables
(``password: $SLM_NATS_PASSWORD_ROUTER``) that nats-server resolves when it starts, so the
file holds no secret; with ``secrets`` (read by the caller from files, e.g. Docker secrets)
the passwords are written in and the file must be kept private.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from subjects.names import Names, check_token

ROLES = ("router", "worker", "monitor")
ACCOUNT = "SLM"
JS = "$JS.API"


class BadPlan(ValueError):
    """Raised when the plan for a config cannot be rendered (a bad name or a missing file)."""


@dataclass(frozen=True)
class Tls:
    """Server-side TLS: certificate and key; a CA to verify clients with (mutual TLS)."""

    cert_file: str
    key_file: str
    ca_file: str = ""
    verify_clients: bool = False


@dataclass(frozen=True)
class Plan:
    names: Names
    models: Sequence[str]
    clients: Sequence[str] = ("client",)
    secrets: Mapping[str, str] = field(default_factory=dict)  # user -> password
    tls: Tls | None = None
    port: int = 4222
    http_port: int = 8222  # monitoring endpoint; 0 = none
    store_dir: str = ""  # JetStream store; "" = the server's default / command line
    max_payload: str = ""  # e.g. "4MB": room for long prompts; "" = the server's 1 MB


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def password_variable(user: str) -> str:
    """The environment variable the config reads a user's password from."""
    return "SLM_NATS_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def streams(names: Names, models: Sequence[str]) -> dict[str, list[str]]:
    """The fabric's streams by kind: work (one per model), ingress, dead, registry."""
    return {
        "work": [names.work_stream(m) for m in models],
        "ingress": [names.ingress_stream],
        "dead": [names.dead_letter_stream],
        "registry": [f"KV_{names.replica_bucket}"],
    }


def _manage(stream: str) -> list[str]:
    """Create/update a stream and read its state (both services create what they need)."""
    return [f"{JS}.STREAM.CREATE.{stream}", f"{JS}.STREAM.UPDATE.{stream}",
            f"{JS}.STREAM.INFO.{stream}"]


def _consume(stream: str) -> list[str]:
    """Create or bind consumers of a stream, pull from them, ack what was pulled."""
    return [f"{JS}.CONSUMER.CREATE.{stream}", f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.DURABLE.CREATE.{stream}.*", f"{JS}.CONSUMER.INFO.{stream}.*",
            f"{JS}.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]


def _read(stream: str) -> list[str]:
    return [f"{JS}.STREAM.MSG.GET.{stream}", f"{JS}.DIRECT.GET.{stream}",
            f"{JS}.DIRECT.GET.{stream}.>"]


def permissions(names: Names, models: Sequence[str], client: str = "client") -> dict[str, Permissions]:
    """What each role may publish and subscribe to; ``client`` names one client user."""
    s = streams(names, models)
    work, ingress, dead, registry = s["work"], s["ingress"][0], s["dead"][0], s["registry"][0]
    replies = f"{names.inbox_prefix}.>"  # every client inbox: routers and workers answer there
    own_api = "_INBOX.>"  # routers' and workers' own request replies (nats-py's default)
    placements = getattr(names, "placements", None)  # routers tell each other (issue 4)
    advisories = [names.max_deliveries_advisory(x, "*") for x in [*work, ingress]]

    # Read-only views of every stream in the account (the account holds only the fabric's):
    # the lag monitor lists streams and consumers and reads the oldest waiting message.
    read_only = [f"{JS}.INFO", f"{JS}.STREAM.NAMES", f"{JS}.STREAM.LIST", f"{JS}.STREAM.INFO.*",
                 f"{JS}.CONSUMER.NAMES.*", f"{JS}.CONSUMER.LIST.*", f"{JS}.CONSUMER.INFO.*.*",
                 f"{JS}.STREAM.MSG.GET.*"]

    router_pub = [names.work_wildcard(m) for m in models] + [
        names.dead_letter_wildcard, replies, *read_only]
    for stream in [*work, ingress, dead, registry]:
        router_pub += _manage(stream)
    for stream in [*work, ingress]:  # dead letters (get, delete) and moves off a dead replica
        router_pub += [*_read(stream), f"{JS}.STREAM.MSG.DELETE.{stream}", *_consume(stream)]
    # The registry watch: an ordered push consumer with flow control, recreated on resets.
    router_pub += [f"{JS}.CONSUMER.CREATE.{registry}", f"{JS}.CONSUMER.CREATE.{registry}.>",
                   f"{JS}.CONSUMER.DELETE.{registry}.*", f"{JS}.CONSUMER.INFO.{registry}.*",
                   f"$JS.FC.{registry}.>", *_read(registry)]
    router_sub = [names.ingress, own_api, *advisories]
    if placements:
        router_pub.append(placements)
        router_sub.append(placements)

    worker_pub = [replies, f"{JS}.INFO"]
    for stream in work:
        worker_pub += [*_manage(stream), *_consume(stream)]
    worker_pub += [*_manage(registry), f"$KV.{names.replica_bucket}.>", *_read(registry)]
    worker_sub = [names.cancel_wildcard, own_api]

    monitor_pub = read_only
    monitor_sub = [own_api, "$JS.EVENT.>"]

    client_pub = [names.ingress, names.durable_ingress, names.cancel_wildcard]
    client_sub = [f"{names.client_inbox_prefix(client)}.>"]
    return {
        "router": Permissions(tuple(router_pub), tuple(router_sub)),
        "worker": Permissions(tuple(worker_pub), tuple(worker_sub)),
        "monitor": Permissions(tuple(monitor_pub), tuple(monitor_sub)),
        "client": Permissions(tuple(client_pub), tuple(client_sub)),
    }


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def _user(user: str, perms: Permissions, secrets: Mapping[str, str]) -> str:
    password = _quote(secrets[user]) if user in secrets else "$" + password_variable(user)
    return (f"      {{ user: {_quote(user)}, password: {password}, permissions: {{\n"
            f"          publish: {{ allow: {_list(perms.publish)} }}\n"
            f"          subscribe: {{ allow: {_list(perms.subscribe)} }}\n"
            f"      }} }}")


def render(plan: Plan) -> str:
    """The nats-server config text for ``plan``."""
    for client in plan.clients:
        check_token("client user", client)
        if client in ROLES:
            raise BadPlan(f"client user {client!r} collides with the {client} role")
    users = []
    base = permissions(plan.names, plan.models)
    for role in ROLES:
        users.append(_user(role, base[role], plan.secrets))
    for client in plan.clients:
        users.append(_user(client, permissions(plan.names, plan.models, client)["client"],
                           plan.secrets))
    lines = [
        "# nats-server configuration for slm-fabric, written by `slm-fabric nats-config`.",
        "# One user per role, least privilege; see fabric/security.py for the reasoning.",
    ]
    if not plan.secrets:
        names = ", ".join(password_variable(u) for u in [*ROLES, *plan.clients])
        lines.append(f"# Passwords come from the environment of nats-server: {names}.")
    else:
        lines.append("# Passwords are written in: keep this file private (mode 0600).")
    lines.append(f"port: {plan.port}")
    if plan.http_port:
        lines.append(f"http_port: {plan.http_port}")
    if plan.max_payload:
        if not re.fullmatch(r"[0-9]+(?:[KMG]B)?", plan.max_payload):
            raise BadPlan(f"max_payload {plan.max_payload!r} is not a size like 4MB")
        lines.append(f"max_payload: {plan.max_payload}")
    lines.append("jetstream: " + (f"{{ store_dir: {_quote(plan.store_dir)} }}"
                                  if plan.store_dir else "enabled"))
    if plan.tls is not None:
        t = plan.tls
        tls = [f"  cert_file: {_quote(t.cert_file)}", f"  key_file: {_quote(t.key_file)}"]
        if t.ca_file:
            tls.append(f"  ca_file: {_quote(t.ca_file)}")
        if t.verify_clients:
            tls.append("  verify: true")
        lines += ["tls {", *tls, "  timeout: 2", "}"]
    lines += [
        "accounts {",
        f"  {ACCOUNT} {{",
        "    jetstream: enabled",
        "    users: [",
        *users,
        "    ]",
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)
