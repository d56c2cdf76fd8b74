"""--publish-social-status: each online/offline transition once on friend.status.updates."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import redis
import trio

from presenced.auth.identity import Identity
from presenced.client import PresenceClient
from presenced.engine import EngineConfig
from presenced.graph.social_events import STATUS_CHANNEL
from presenced.server.app import serve
from presenced.server.config import ServerConfig

ALICE, BOB = (Identity.generate(random.Random(700 + i)) for i in range(2))


class StatusWatcher:
    """A subscriber of friend.status.updates on the social service's Redis."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(STATUS_CHANNEL)
        self.seen: list[dict] = []

    async def next(self, timeout: float = 10.0) -> dict:
        with trio.fail_after(timeout):
            while True:
                m = await trio.to_thread.run_sync(self._pubsub.get_message, True, 0.1)
                if m is not None:
                    body = json.loads(m["data"])
                    self.seen.append(body)
                    return body

    async def quiet(self, seconds: float = 0.5) -> list[dict]:
        """Whatever else arrives within `seconds`."""
        with trio.move_on_after(seconds):
            while True:
                await self.next(seconds)
        return self.seen

    def close(self) -> None:
        self._pubsub.close()
        self._redis.close()


async def test_transitions_are_published_once_each(nursery, redis_server):
    watcher = StatusWatcher(redis_server.url)
    # Subscribed before anything happens (the confirmation is read first).
    await trio.to_thread.run_sync(watcher._pubsub.get_message, False, 1.0)
    config = replace(ServerConfig(port=0, admin_port=0,
                                  engine=EngineConfig(offline_grace_ms=100)),
                     social_events_url=redis_server.url, publish_social_status=True)
    shutdown = trio.Event()
    hub = await nursery.start(lambda task_status: serve(config, shutdown,
                                                        task_status=task_status))
    url = f"ws://127.0.0.1:{hub.listen_port}/"
    try:
        async with PresenceClient.connect(url, BOB) as bob:
            assert await watcher.next() == {"address": BOB.address, "status": 0}
            # Heartbeats and a second connection are not transitions.
            await bob.heartbeat("main", 1, 1)
            await bob.heartbeat("main", 2, 2)
            async with PresenceClient.connect(url, BOB):
                pass
        assert await watcher.next() == {"address": BOB.address, "status": 1}
        async with PresenceClient.connect(url, ALICE):
            assert await watcher.next() == {"address": ALICE.address, "status": 0}
        assert await watcher.next() == {"address": ALICE.address, "status": 1}
        assert await watcher.quiet() == [
            {"address": BOB.address, "status": 0}, {"address": BOB.address, "status": 1},
            {"address": ALICE.address, "status": 0}, {"address": ALICE.address, "status": 1},
        ]
        assert hub.status_publisher.published == 4
    finally:
        shutdown.set()
        watcher.close()
