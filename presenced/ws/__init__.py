"""presenced's WebSocket layer, on wsproto's public API: used by the server and the simulator.

Below the server and the simulator, above nothing of presenced but the close
table (`presenced.closes`): it imports the standard library, wsproto and trio.

- `frames`: the splitter that reads complete binary frames without wsproto,
  and the frames written without it (no I/O);
- `handshake`: the HTTP/1.1 upgrade, both sides (no I/O);
- `codec`: one connection's frames, client or server role (no I/O);
- `poller`: one level-triggered epoll set served by one trio task;
- `transport`: a socket, its codec and its poller registration.
"""
