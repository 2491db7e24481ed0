"""A running router picks up a changed rules file (file watch and SIGHUP) and keeps its old
rules, with an error naming the problem, when the new file is bad."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from fabric.client import chat
from router.rules import default_rules_text
from tests.conftest import wait_until


def rules_sending_general_to(model: str) -> str:
    return default_rules_text().replace('general = "general"', f'general = "{model}"', 1)


async def test_changed_rules_file_is_picked_up_and_a_bad_one_refused(
        fabric, client, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.toml"
    path.write_text(default_rules_text())
    router = await fabric.router(rules_path=str(path), rules_poll=0.02)
    await fabric.worker("general", "r0")
    await fabric.worker("reasoning", "r0")
    await fabric.wait_for_replicas(2)
    prompt = chat("Tell me about the sea.", max_tokens=2)
    assert (await client.complete(prompt, timeout=10)).model == "general"
    first = router.rules.digest  # type: ignore[union-attr]

    path.write_text(rules_sending_general_to("reasoning"))
    os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    await wait_until(lambda: router.rules.digest != first)  # type: ignore[union-attr]
    assert (await client.complete(prompt, timeout=10)).model == "reasoning"
    second = router.rules.digest  # type: ignore[union-attr]

    caplog.set_level(logging.ERROR, logger="slm.router")
    path.write_text("[models]\ncode = 'code'\n")
    os.utime(path, ns=(1, 2 * 10**18))
    await wait_until(lambda: any("no model for" in r.getMessage() for r in caplog.records))
    assert router.rules.digest == second  # type: ignore[union-attr]
    assert (await client.complete(prompt, timeout=10)).model == "reasoning"

    path.write_text(rules_sending_general_to("poetry"))  # a model without a work stream
    os.utime(path, ns=(1, 3 * 10**18))
    await wait_until(lambda: any("no work stream" in r.getMessage() for r in caplog.records))
    assert router.rules.digest == second  # type: ignore[union-attr]


async def test_sighup_reloads_the_rules(fabric, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.toml"
    path.write_text(default_rules_text())
    router = await fabric.router(rules_path=str(path), rules_poll=0)  # SIGHUP only
    if not router.sighup_installed:
        pytest.skip("the router's loop is not on the main thread, so it cannot take SIGHUP")
    first = router.rules.digest  # type: ignore[union-attr]
    path.write_text(rules_sending_general_to("reasoning"))
    os.kill(os.getpid(), signal.SIGHUP)
    await wait_until(lambda: router.rules.digest != first)  # type: ignore[union-attr]
    assert router.rules.models[router.rules.default_class] == "reasoning"  # type: ignore[union-attr]
