"""dist/presenced, the one-file executable of scripts/build-binary, as shipped.

scripts/test builds it and sets PRESENCED_TEST_BINARY, so CI always runs
these; a plain `pytest` without the binary skips them with the reason.
The binary runs with an empty environment (no venv, no PYTHONPATH).
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import trio

from presenced import __version__
from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from tests.support.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent


def _binary() -> Path:
    wanted = os.environ.get("PRESENCED_TEST_BINARY")
    path = Path(wanted) if wanted else ROOT / "dist" / "presenced"
    if not path.is_file():
        if wanted:
            pytest.fail(f"PRESENCED_TEST_BINARY={wanted} does not exist: run scripts/build-binary")
        pytest.skip("dist/presenced not built: run scripts/build-binary (scripts/test does)")
    return path.resolve()


# No venv, no Python path: only what a bare machine has.
BARE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


def run_binary(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_binary()), *args], env=BARE_ENV, capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def test_the_binary_prints_its_version():
    result = run_binary("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"presenced {__version__}"


async def test_the_binary_serves_a_client_and_its_tools_work():
    user = Identity.generate(random.Random(12))
    daemon = Daemon(command=[str(_binary())], env=BARE_ENV)
    daemon.start(timeout=60)
    try:
        async with PresenceClient.connect(daemon.url, user) as client:
            response = await client.heartbeat("main", 3, 4)
            assert response.position.x == 3
            status = await trio.to_thread.run_sync(
                lambda: run_binary("status", "--json", "--admin-url", daemon.admin_url))
            assert status.returncode == 0, status.stderr
            assert '"online_users": 1' in status.stdout
            who = await trio.to_thread.run_sync(
                lambda: run_binary("who-online", user.address, "--admin-url",
                                   daemon.admin_url))
            assert who.returncode == 0 and "main" in who.stdout, who.stderr
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
