"""The load generator's connection (presenced.simulate.wire) against a real daemon."""

from __future__ import annotations

import signal
import time

import pytest
import trio
from trio_websocket import HandshakeError

from presenced.auth.identity import Identity
from presenced.client import ConnectionEnded
from presenced.simulate.user import classify
from presenced.simulate.wire import WireClient
from presenced.v1 import presence_pb2 as pb
from presenced.ws.poller import current_poller
from tests.support.daemon import Daemon, free_port


def position(x: int, y: int) -> bytes:
    return pb.PositionPayload(position=pb.Position(realm="main", x=x, y=y)).SerializeToString()


async def test_a_wire_client_logs_in_beats_and_closes_from_its_source_address():
    with Daemon("--heartbeat-rate", "100", "--heartbeat-burst", "100") as daemon:
        async with WireClient.connect(daemon.url, Identity.generate(),
                                      local_address="127.0.0.2") as client:
            assert client._transport.sock.getsockname()[0] == "127.0.0.2"
            for i in range(20):
                response = await client.heartbeat_raw(position(i, -i))
                assert response.position.x == i and response.position.y == -i
            client.subscribe(lambda updates, now: None)
            response = await client.heartbeat_raw(position(0, 0))
            assert response.WhichOneof("response") == "position"
            transport = client._transport
        # Closed with 1000 after the stream was cancelled; the socket is gone.
        assert transport.closed
        assert len(current_poller()) == 0


async def test_nothing_listening_is_a_handshake_error():
    with pytest.raises(HandshakeError) as info:
        async with WireClient.connect(f"ws://127.0.0.1:{free_port()}/", Identity.generate()):
            pass
    assert classify(info.value, True)[0] == "connect-failed"
    assert isinstance(info.value.__cause__, OSError)


async def test_an_http_endpoint_that_refuses_the_upgrade_is_a_handshake_error():
    with Daemon() as daemon:
        url = daemon.admin_url.replace("http://", "ws://") + "/nothing-here"
        with pytest.raises(HandshakeError) as info:
            async with WireClient.connect(url, Identity.generate()):
                pass
    assert info.value.__cause__.status >= 400
    assert str(info.value).startswith(f"handshake refused: {info.value.__cause__.status}")
    assert classify(info.value, True)[0] == "connect-failed"


async def test_a_login_the_server_refuses_is_its_close_code(monkeypatch):
    with Daemon() as daemon:
        # A login frame signed an hour ago, outside the daemon's window.
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
        with pytest.raises(ConnectionEnded) as info:
            async with WireClient.connect(daemon.url, Identity.generate()):
                pass
        monkeypatch.undo()
    assert info.value.code == 3003
    assert classify(info.value, True)[0] == "login-refused"
    await trio.sleep(0)


async def test_a_server_shutting_down_ends_the_session_with_1001():
    daemon = Daemon()
    with daemon:
        with pytest.raises(ConnectionEnded) as info:
            async with WireClient.connect(daemon.url, Identity.generate()) as client:
                client.subscribe(lambda updates, now: None)
                await client.heartbeat_raw(position(1, 1))
                daemon.signal(signal.SIGTERM)
                with trio.fail_after(10):
                    await trio.sleep_forever()
    assert info.value.code == 1001
