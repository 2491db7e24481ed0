"""Stream one answer to the terminal: slm-fabric ask "prompt"."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from fabric.client import Client, FabricError, chat
from subjects.names import DEFAULT_PREFIX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--model", default="auto", help="a served model, or auto (default)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--session", help="session id: later turns stick to the same replica")
    parser.add_argument("--nats-url", default=os.environ.get("SLM_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default=os.environ.get("SLM_PREFIX", DEFAULT_PREFIX))
    parser.add_argument("--timeout", type=float, default=60.0)


def run(args: argparse.Namespace) -> int:
    return int(uvloop.run(_ask(args)))


async def _ask(args: argparse.Namespace) -> int:
    client = await Client.connect(args.nats_url, args.prefix)
    request = chat(args.prompt, model=args.model, max_tokens=args.max_tokens, user=args.session)
    try:
        async for chunk in client.stream(request, timeout=args.timeout):
            if chunk.restarted:
                sys.stdout.write("\n[restarted on another replica]\n")
            sys.stdout.write(chunk.delta)
            sys.stdout.flush()
            if chunk.final:
                u = chunk.usage
                print(f"\n[{chunk.model}/{chunk.replica} · {chunk.finish_reason} · "
                      f"{u.prompt_tokens if u else 0} prompt, {u.completion_tokens if u else 0} "
                      f"completion, {u.cached_tokens if u else 0} cached tokens]", file=sys.stderr)
        return 0
    except FabricError as exc:
        print(f"\nerror {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await client.close()
