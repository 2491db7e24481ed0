"""Write a least-privilege nats-server config: one user per role (client, router, worker, monitor).

Passwords are not in the file unless --secrets-dir is given: the config names environment
variables (SLM_NATS_PASSWORD_<USER>) that nats-server reads when it starts. With
--secrets-dir, each user's password is read from the file of that name in the directory
(Docker secrets), written in, and the output file is made private (mode 0600).
Components then connect as their role, e.g. SLM_NATS_URL=nats://router:<password>@nats:4222.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fabric.security import ROLES, BadPlan, Plan, Tls, password_variable, render
from router.rules import DEFAULT_MODELS
from subjects.names import DEFAULT_PREFIX, BadName, Names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write here (default: standard output)")
    parser.add_argument("--prefix", default=os.environ.get("SLM_PREFIX", DEFAULT_PREFIX))
    parser.add_argument("--models", default=",".join(sorted(set(DEFAULT_MODELS.values()))),
                        help="served models, comma-separated (their work streams get permissions)")
    parser.add_argument("--clients", default="client",
                        help="client user names, comma-separated; each gets its own inboxes")
    parser.add_argument("--secrets-dir", help="read each user's password from DIR/<user>")
    parser.add_argument("--port", type=int, default=4222)
    parser.add_argument("--http-port", type=int, default=8222, help="monitoring port (0: none)")
    parser.add_argument("--store-dir", default="", help="JetStream store directory")
    parser.add_argument("--max-payload", default="", help="largest message, e.g. 4MB")
    parser.add_argument("--tls-cert", help="server certificate (enables TLS)")
    parser.add_argument("--tls-key", help="server private key")
    parser.add_argument("--tls-ca", default="", help="CA to verify client certificates with")
    parser.add_argument("--tls-verify", action="store_true", help="require client certificates")


def run(args: argparse.Namespace) -> int:
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        names = Names(args.prefix)
        secrets = _read_secrets(args.secrets_dir, [*ROLES, *clients]) if args.secrets_dir else {}
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise BadPlan("TLS needs both --tls-cert and --tls-key")
            tls = Tls(args.tls_cert, args.tls_key, args.tls_ca, args.tls_verify)
        text = render(Plan(names, models, clients, secrets, tls, args.port, args.http_port,
                           args.store_dir, args.max_payload))
    except (BadPlan, BadName) as exc:
        print(f"slm-fabric nats-config: {exc}", file=sys.stderr)
        return 2
    if args.output:
        path = Path(args.output)
        path.write_text(text)
        if secrets:
            path.chmod(0o600)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if not secrets:
        needed = " ".join(password_variable(u) for u in [*ROLES, *clients])
        print(f"nats-server needs these in its environment: {needed}", file=sys.stderr)
    return 0


def _read_secrets(directory: str, users: list[str]) -> dict[str, str]:
    secrets = {}
    for user in users:
        path = Path(directory) / user
        try:
            secrets[user] = path.read_text().strip()
        except OSError as exc:
            raise BadPlan(f"no password for user {user!r}: cannot read {path} ({exc.strerror})") from exc
        if not secrets[user]:
            raise BadPlan(f"the password file {path} is empty")
    return secrets
