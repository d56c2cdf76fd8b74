"""Helpers for tests of the admin endpoint and the operator commands."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence

import httpx
from typer.testing import CliRunner, Result

from presenced.cli.main import app


def new_address() -> str:
    """A fresh random user address, so tests sharing a daemon never collide."""
    return "0x" + secrets.token_hex(20)


def redis_store_available() -> str | None:
    """None when Redis-backed runs are possible, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


def admin_client(admin_url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=admin_url, headers=headers, timeout=20, trust_env=False)


def clean_env(**extra: str) -> dict[str, str | None]:
    """Environment overrides for the CLI: no PRESENCED_* leaking in from outside."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PRESENCED_")}
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], admin_url: str | None = None, token: str | None = None,
    input: str | bytes | None = None,
) -> Result:
    """Runs `presenced ARGS` in-process (fast); the daemon it talks to is a real process."""
    extra = {}
    if admin_url is not None:
        extra["PRESENCED_ADMIN_URL"] = admin_url
    if token is not None:
        extra["PRESENCED_ADMIN_TOKEN"] = token
    return CliRunner().invoke(app, list(args), env=clean_env(**extra), input=input,
                              catch_exceptions=False)


def run_cli_process(
    args: Sequence[str], admin_url: str | None = None, token: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m presenced ARGS` as a real process (exit codes, tracebacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    if admin_url is not None:
        env["PRESENCED_ADMIN_URL"] = admin_url
    if token is not None:
        env["PRESENCED_ADMIN_TOKEN"] = token
    env["COLUMNS"] = "120"
    return subprocess.run([sys.executable, "-m", "presenced", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
