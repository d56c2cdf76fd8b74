"""`presenced serve --workers N`: processes sharing one port through SO_REUSEPORT."""

from __future__ import annotations

import subprocess
import sys

import httpx
import trio

from presenced.client import PresenceClient
from presenced.socialgraph import user_identity
from tests.support.daemon import Daemon

USERS = [user_identity(7, i) for i in range(24)]


def _sessions(admin_url: str) -> int:
    return httpx.get(f"{admin_url}/v1/status").json()["sessions"]


async def test_two_workers_share_the_port_and_one_picture(redis_server):
    with Daemon("--workers", "2", "--redis-url", redis_server.url,
                "--offline-grace", "0.1", admin_ports=2) as daemon:
        first, last = USERS[0], USERS[-1]
        worker_admin = [daemon.admin_url, f"http://127.0.0.1:{daemon.admin_port + 1}"]
        # Both workers answer on their own admin ports.
        for url in worker_admin:
            with trio.fail_after(20):
                while True:
                    try:
                        if httpx.get(f"{url}/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.1)
        httpx.put(f"{daemon.admin_url}/v1/friendships/{first.address}/{last.address}")
        async with PresenceClient.connect(daemon.url, first) as watcher:
            async with watcher.subscribe() as updates:
                async with trio.open_nursery() as nursery:
                    # Enough connections that the kernel puts some on each worker.
                    done = trio.Event()
                    connected = 0

                    async def hold(identity) -> None:
                        nonlocal connected
                        async with PresenceClient.connect(daemon.url, identity):
                            connected += 1
                            await done.wait()

                    for identity in USERS[1:-1]:
                        nursery.start_soon(hold, identity)
                    async with PresenceClient.connect(daemon.url, last) as friend:
                        await friend.heartbeat("main", 4, 2)
                        with trio.fail_after(10):
                            batch = []
                            while not any(u.position.x == 4 for u in batch):
                                batch = await updates.next_batch()
                        with trio.fail_after(10):
                            while connected < len(USERS) - 2:
                                await trio.sleep(0.05)
                        counts = [_sessions(url) for url in worker_admin]
                        assert sum(counts) == len(USERS)
                        assert min(counts) > 0, counts
                    done.set()
        assert daemon.stop() == 0


def test_several_workers_need_redis():
    result = subprocess.run(
        [sys.executable, "-m", "presenced", "serve", "--workers", "2"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--redis-url" in result.stderr
