"""`presenced serve` as an operator runs it: signals, environment, version."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import trio

from presenced import __version__
from presenced.auth.identity import Identity
from presenced.client import ConnectionEnded, PresenceClient
from tests.support.daemon import Daemon, free_port, wait_for_port

USER = Identity.generate(random.Random(77))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_closes_connections_with_1001_and_exits_0(sig):
    with Daemon() as daemon:
        async with PresenceClient.connect(daemon.url, USER) as client:
            async with client.subscribe() as updates:
                daemon.signal(sig)
                with pytest.raises(ConnectionEnded) as info:
                    with trio.fail_after(10):
                        while True:
                            await updates.next_batch()
                assert info.value.code == 1001
        assert daemon.proc.wait(10) == 0
        assert "Traceback" not in daemon.log()


def test_options_come_from_the_environment():
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "PRESENCED_PORT": str(port), "PRESENCED_ADMIN_PORT": str(admin_port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "presenced", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", admin_port, 20, proc)
        wait_for_port("127.0.0.1", port, 5, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_version():
    out = subprocess.run([sys.executable, "-m", "presenced", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.strip() == f"presenced {__version__}"


def test_a_bad_friends_file_is_one_clear_line_and_exit_2(tmp_path):
    friends = tmp_path / "friends.csv"
    friends.write_text("0xabc,0xdef\n")
    out = subprocess.run(
        [sys.executable, "-m", "presenced", "serve", "--port", "0", "--admin-port", "0",
         "--friends", str(friends)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "line 1" in out.stderr and "Traceback" not in out.stderr
