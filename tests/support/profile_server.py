"""A Catalyst lambdas stand-in on loopback: `POST /profiles` with `{"ids": [...]}`.

A real HTTP server (the standard library's, in a thread), so it serves both in-process tests
and a daemon started as a subprocess. It answers from `profiles` (address -> name) in the
Catalyst format, records each request's ids, and can be told to fail or to hold answers.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def catalyst_profile(address: str, name: str) -> dict:
    return {
        "timestamp": 1700000000000,
        "avatars": [{
            "userId": address,
            "ethAddress": address,
            "name": name,
            "hasClaimedName": not name.endswith("#1234"),
            "avatar": {"snapshots": {
                "face256": f"https://profile-images.example/{address}/face.png",
                "body": "https://profile-images.example/body.png",
            }},
        }],
    }


class ProfileServer:
    def __init__(self, profiles: dict[str, str] | None = None) -> None:
        self.profiles: dict[str, str] = dict(profiles or {})
        self.requests: list[list[str]] = []
        self.status = 200
        # Replaces the JSON answer when set (bytes sent as is).
        self.raw_body: bytes | None = None
        # Cleared to hold answers until set again.
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                ids = [str(i).lower() for i in body.get("ids", [])]
                with server.lock:
                    server.requests.append(ids)
                server.gate.wait(timeout=30)
                if self.path != "/lambdas/profiles":
                    status, out = 404, b"not found"
                elif server.raw_body is not None:
                    status, out = server.status, server.raw_body
                else:
                    status = server.status
                    out = json.dumps([catalyst_profile(a, server.profiles[a])
                                      for a in ids if a in server.profiles]).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/lambdas"

    def __enter__(self) -> ProfileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
