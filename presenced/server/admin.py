"""The admin and metrics HTTP endpoint: a Starlette app served by hypercorn.

It runs in the daemon's own trio loop (hypercorn's trio worker), so its
handlers call the hub directly, with no locks and no threads: every handler
is `async def`, because Starlette would run a plain `def` in a worker thread,
away from the engine's single thread.

The API is described in docs/admin-api.md; the CLI (presenced/cli/) is its
main client. Errors are always JSON `{"error": ...}` with a 4xx or 5xx
status, never a traceback.
"""

from __future__ import annotations

import codecs
import hmac
import io
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from presenced import __version__
from presenced.logs import RateLimit, redact_url
from presenced.model import Position, Presence, normalize_address
from presenced.server.config import ServerConfig
from presenced.server.hub import Hub
from presenced.server.prometheus import build_registry
from presenced.server.readiness import not_ready_reasons
from presenced.store.base import Friendship, StoreUnavailable
from presenced.store.friends_file import BOM, LineError, is_header, parse_friendship_line

log = logging.getLogger("presenced.admin")
audit_log = logging.getLogger("presenced.audit")

# Request bodies: imports may be large files (the CLI sends bigger ones in
# chunks), everything else is small.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_PRESENCE_BYTES = 8 * 1024 * 1024
# An import is parsed as it arrives, this many bytes at a time, in a worker
# thread: the event loop never runs one long parse (a 64 MiB body parsed at
# once held it for seconds), and only one step's text is held at a time.
IMPORT_STEP_BYTES = 1024 * 1024
# Friendships handed to the store at once during an import: keeps each
# Redis pipeline bounded and lets other tasks run between chunks (2,000
# cost the event loop about 5 ms with the embedded store).
IMPORT_CHUNK = 2_000
# Errors listed in a rejected import; the total is always reported.
MAX_LISTED_ERRORS = 1000

# Handlers that answer during start-up; the others return 503 until the
# store has loaded.
PROBES = frozenset({"healthz", "readyz", "metrics", "status"})

# Paths that answer without a token: liveness probes rarely carry one.
OPEN_PATHS = frozenset({"/healthz"})


class ApiError(Exception):
    """Ends a request with a JSON error: `{"error": message, **extra}`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# ------------------------------------------------------------------ config


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach ("localhost", 127/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve anywhere.
        return False


def admin_config_problem(config: ServerConfig) -> str | None:
    """Why this configuration must not be served, or None."""
    if not config.admin_token and not is_loopback(config.admin_host):
        return (
            f"refusing to serve the admin endpoint on {config.admin_host} without a token: "
            "set PRESENCED_ADMIN_TOKEN, or bind it to loopback with --admin-host 127.0.0.1"
        )
    return None


def base_url(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def bind_admin_socket(host: str, port: int) -> socket.socket:
    """Bind (not listen) the admin socket; raises OSError.

    Binding here rather than inside hypercorn turns "address in use" into a
    plain error at start-up, and lets port 0 pick a free port we can report.
    """
    infos = await trio.socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_admin(
    hub: Hub,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin app on the bound `sock` until `shutdown_trigger` returns."""
    config = HypercornConfig()
    # hypercorn adopts an already-bound socket through an fd:// bind (the
    # systemd socket-activation path); it then owns the descriptor.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    http_log = logging.getLogger("presenced.admin.http")
    if http_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        # hypercorn's start-up chatter ("CTRL + C to quit") is noise in a
        # daemon's log; its errors still show.
        http_log.setLevel(logging.WARNING)
    config.errorlog = http_log
    config.graceful_timeout = 2.0
    config.include_server_header = False
    await hypercorn_serve(create_app(hub), config, shutdown_trigger=shutdown_trigger,
                          task_status=_Started(task_status))


class _Started:
    """Adapts hypercorn's `started(binds)` to a plain `started()`."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status = task_status

    def started(self, value: object = None) -> None:
        self._task_status.started()


# ------------------------------------------------------------------ the app


def create_app(hub: Hub) -> ASGIApp:
    """The admin ASGI app for `hub`; requires `hub.config.admin_token` if set."""
    api = _Api(hub)
    routes = [
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Route("/v1/status", api.status),
        Route("/v1/users/{address}/presence", api.user_presence),
        Route("/v1/users/{address}/friends", api.user_friends),
        Route("/v1/users/{address}/online-friends", api.user_online_friends),
        Route("/v1/friendships/{a}/{b}", api.add_friendship, methods=["PUT"]),
        Route("/v1/friendships/{a}/{b}", api.remove_friendship, methods=["DELETE"]),
        Route("/v1/friendships/import", api.import_friendships, methods=["POST"]),
        Route("/v1/users/{address}/blocks", api.user_blocks),
        Route("/v1/blocks/{blocker}/{blocked}", api.add_block, methods=["PUT"]),
        Route("/v1/blocks/{blocker}/{blocked}", api.remove_block, methods=["DELETE"]),
        Route("/v1/presence", api.inject_presence, methods=["POST"]),
    ]
    app: ASGIApp = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app = BrowserGuard(app, loopback_hosts_only=is_loopback(hub.config.admin_host),
                       refused=hub.metrics.admin_refused)
    token = hub.config.admin_token
    return BearerAuth(app, token) if token else app


async def _http_error(request: Request, exc: Exception) -> Response:
    # Routing errors (404, 405) in the same JSON shape as everything else.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every path but OPEN_PATHS."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            if not self._authorized(scope):
                response = JSONResponse(
                    {"error": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="presenced"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(credentials.strip(), self.token)
        return False


# Media types each write accepts (None: any path not listed). None of them is one a web page
# can send cross-origin without a CORS preflight (text/plain, form encodings), which this
# endpoint never answers.
WRITE_MEDIA_TYPES: dict[str | None, frozenset[str]] = {
    None: frozenset({"application/json"}),
    # The body of an import is lines of a friends file: CSV or JSON lines.
    "/v1/friendships/import": frozenset({"text/csv", "application/x-ndjson"}),
}
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# Sec-Fetch-Site values of requests a page on another site cannot have made.
_OWN_FETCH_SITES = frozenset({b"same-origin", b"none"})


class BrowserGuard:
    """Refuses what a web page could make a browser send to this endpoint.

    The tokenless loopback default trusts every local process, so a page open in a local
    browser must not count as one: it can send "simple" cross-origin requests (a `text/plain`
    POST) without asking first (CSRF), and with DNS rebinding it can even read answers, under
    its own host name. So:

    - on a loopback bind, the `Host` header must name loopback (`localhost`, 127.0.0.0/8,
      `[::1]`), which a rebound name never does;
    - a request a browser marks as coming from elsewhere (an `Origin` other than this
      endpoint's own, or `Sec-Fetch-Site` other than `same-origin` / `none`) is refused;
    - a write (any method but GET and HEAD) with a body must declare a media type of
      WRITE_MEDIA_TYPES, and a POST always must.

    Refusals are JSON errors (403, or 415 for the media type), logged and counted in
    `refused` (presenced_admin_requests_refused_total{reason}).
    """

    def __init__(self, app: ASGIApp, *, loopback_hosts_only: bool,
                 refused: dict[str, int]) -> None:
        self.app = app
        self.loopback_hosts_only = loopback_hosts_only
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, reason, message = refusal
                self.refused[reason] = self.refused.get(reason, 0) + 1
                log.warning("refused admin request %s %s: %s", scope["method"], scope["path"],
                            message)
                await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, metric reason, message) if the request must be refused, else None."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback_hosts_only and not _names_loopback(host):
            return (403, "host", f"Host {host[:100]!r} is not a loopback name: call this "
                                 "endpoint as localhost, 127.0.0.1 or [::1]")
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") != f"http://{host}":
            return (403, "origin", "cross-origin requests are refused")
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.lower() not in _OWN_FETCH_SITES:
            return (403, "origin", "cross-site requests are refused")
        method = scope["method"]
        if method in _SAFE_METHODS:
            return None
        content_type = headers.get(b"content-type")
        if content_type is None:
            has_body = (headers.get(b"content-length", b"0") not in (b"0", b"")
                        or b"transfer-encoding" in headers)
            if method != "POST" and not has_body:
                return None
            media = ""
        else:
            media = content_type.decode("latin-1").partition(";")[0].strip().lower()
        accepted = WRITE_MEDIA_TYPES.get(scope["path"], WRITE_MEDIA_TYPES[None])
        if media not in accepted:
            return (415, "content-type",
                    f"{method} {scope['path']} needs Content-Type "
                    f"{' or '.join(sorted(accepted))}, not {media or 'none'}")
        return None


def _names_loopback(host: str) -> bool:
    """Whether a Host header value (a name or address, maybe with a port) is loopback."""
    if host.startswith("["):
        name = host[: host.find("]") + 1]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return bool(name) and is_loopback(name)


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _endpoint(
    handler: Callable[[_Api, Request], Awaitable[Response]],
) -> Callable[[_Api, Request], Awaitable[Response]]:
    """Turns every failure of a handler into a JSON error response."""

    async def wrapper(self: _Api, request: Request) -> Response:
        try:
            if handler.__name__ not in PROBES and not self.hub.ready:
                # The store has not loaded: nothing it answers would be true yet.
                raise ApiError(503, "; ".join(self._not_ready()) or "starting")
            return await handler(self, request)
        except ApiError as e:
            return _json({"error": e.message, **e.extra}, e.status)
        except StoreUnavailable as e:
            return _json({"error": f"store unavailable: {e}" if str(e) else
                          "store unavailable"}, 503)
        except Exception:
            log.exception("admin request %s %s failed", request.method, request.url.path)
            return _json({"error": "internal error (see the daemon's log)"}, 500)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


class _Api:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.registry = build_registry(hub)
        self.audit = AuditTrail(hub.config.admin_token is not None)
        self._import_lock = trio.Lock()
        # One import parse step at a time: each holds the GIL while it runs.
        self._parse_limiter = trio.CapacityLimiter(1)

    # ------------------------------------------------------------- probes

    @_endpoint
    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    @_endpoint
    async def readyz(self, request: Request) -> Response:
        reasons = self._not_ready()
        body = {"ready": not reasons, "store": type(self.hub.store).__name__, "reasons": reasons,
                "degraded": self._degraded()}
        if reasons:
            return _json({"error": "not ready: " + "; ".join(reasons), **body}, 503)
        return _json(body)

    def _not_ready(self) -> list[str]:
        return not_ready_reasons(self.hub.phase())

    def _degraded(self) -> list[str]:
        """What works less well than it should, without making the instance unready.

        The friends database being away is one: every instance shares it, so
        failing readiness would take the whole fleet out, while each keeps
        serving the friendships it has.
        """
        source = self.hub.friends_db
        return source.degraded_reasons() if source is not None else []

    @_endpoint
    async def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self.registry), headers={"Content-Type": content_type})

    @_endpoint
    async def status(self, request: Request) -> Response:
        hub = self.hub
        config = hub.config
        engine = config.engine
        reasons = self._not_ready()
        return _json({
            "version": __version__,
            "pid": os.getpid(),
            "instance": hub.store.instance_id,
            "worker": config.worker_index,
            "store": type(hub.store).__name__,
            "store_kind": config.store_kind,
            "store_url": redact_url(config.redis_url) if config.redis_url else None,
            "store_healthy": hub.phase().store_healthy,
            "ready": not reasons,
            "reasons": reasons,
            "listen": {"host": config.host, "port": hub.listen_port or config.port},
            "now_ms": hub.now_ms() if hub.ready else int(time.time() * 1000),
            "connections": len(hub.live),
            "sessions": len(hub.connections),
            "online_users": hub.engine.online_count,
            "friends_source": self._friends_source(),
            "engine": {
                "ttl_ms": engine.ttl_ms,
                "offline_grace_ms": engine.offline_grace_ms,
                "heartbeat_rate": engine.heartbeat_rate,
                "heartbeat_burst": engine.heartbeat_burst,
                "realm_max_bytes": engine.realm_max_bytes,
                "bounds": {"min_x": engine.min_x, "min_y": engine.min_y,
                           "max_x": engine.max_x, "max_y": engine.max_y},
            },
        })

    def _friends_source(self) -> dict[str, Any]:
        source = self.hub.friends_db
        if source is None:
            return {"kind": "local"}
        return {
            "kind": "database",
            "database": source.database.description,
            "healthy": source.healthy,
            "events": (None if source.config.events_url is None
                       else "connected" if source.events_connected else "disconnected"),
            "friendships": source.friendship_count,
            "blocks": source.block_count,
            "degraded": source.degraded_reasons(),
        }

    # -------------------------------------------------------------- users

    @_endpoint
    async def user_presence(self, request: Request) -> Response:
        address = _address(request.path_params["address"])
        presence = self.hub.presence_of(address)
        body = _presence_json(presence) if presence is not None else {
            "address": address, "online": False}
        return _json({**body, "now_ms": self.hub.now_ms()})

    @_endpoint
    async def user_friends(self, request: Request) -> Response:
        address = _address(request.path_params["address"])
        friends = sorted(await self.hub.store.friends_of(address))
        return _json({"address": address, "friends": friends, "count": len(friends)})

    @_endpoint
    async def user_online_friends(self, request: Request) -> Response:
        address = _address(request.path_params["address"])
        friends = await self.hub.store.friends_of(address)
        online = self.hub.engine.presences(friends)
        return _json({
            "address": address,
            "friends_count": len(friends),
            "online_count": len(online),
            "online_friends": [_presence_json(p) for p in online],
            "now_ms": self.hub.now_ms(),
        })

    # -------------------------------------------------------- friendships

    def _refuse_edits_of_an_external_graph(self) -> None:
        if self.hub.graph_is_external:
            raise ApiError(409, "friendships and blocks come from the friends database "
                                "(--friends-db): change them in the social service")

    @_endpoint
    async def add_friendship(self, request: Request) -> Response:
        self._refuse_edits_of_an_external_graph()
        a, b = self._pair(request)
        added = await self.hub.add_friendships([(a, b)])
        self.audit.record(request, "friendship-add", f"{a} {b}", changed=len(added))
        return _json({"a": a, "b": b, "added": bool(added)}, 201 if added else 200)

    @_endpoint
    async def remove_friendship(self, request: Request) -> Response:
        self._refuse_edits_of_an_external_graph()
        a, b = self._pair(request)
        removed = await self.hub.remove_friendships([(a, b)])
        self.audit.record(request, "friendship-remove", f"{a} {b}", changed=len(removed))
        return _json({"a": a, "b": b, "removed": bool(removed)})

    def _pair(self, request: Request) -> tuple[str, str]:
        a = _address(request.path_params["a"])
        b = _address(request.path_params["b"])
        if a == b:
            raise ApiError(400, "a user cannot be their own friend")
        return (a, b) if a < b else (b, a)

    @_endpoint
    async def import_friendships(self, request: Request) -> Response:
        self._refuse_edits_of_an_external_graph()
        first_line = _int_param(request, "first_line", 1, minimum=1)
        # One import at a time: each holds its friendships until applied.
        async with self._import_lock:
            parsed = await _parse_import(request, self._parse_limiter, first_line)
        if parsed.errors:
            listed = [{"line": e.line + first_line - 1, "message": e.message}
                      for e in parsed.errors]
            raise ApiError(
                400, f"{parsed.error_count} malformed line"
                     f"{'s' if parsed.error_count != 1 else ''}; nothing was imported",
                errors=listed, error_count=parsed.error_count,
            )
        unique = list(parsed.pairs)
        added = 0
        for start in range(0, len(unique), IMPORT_CHUNK):
            try:
                added += len(await self.hub.add_friendships(unique[start:start + IMPORT_CHUNK]))
            except StoreUnavailable as e:
                self.audit.record(request, "friendship-import",
                                  f"{len(unique)} friendships (failed part-way)", changed=added)
                raise ApiError(503, f"store unavailable after {start} of {len(unique)} "
                                    f"friendships: {e}", added=added) from None
            await trio.lowlevel.checkpoint()
        self.audit.record(request, "friendship-import",
                          f"{len(unique)} friendships from lines {first_line}-"
                          f"{first_line + parsed.lines - 1}", changed=added)
        return _json({
            "lines": parsed.lines,
            "friendships": len(unique),
            "duplicates": parsed.paired_lines - len(unique),
            "added": added,
            "existing": len(unique) - added,
        })

    # ------------------------------------------------------------- blocks

    @_endpoint
    async def user_blocks(self, request: Request) -> Response:
        address = _address(request.path_params["address"])
        blocking, blocked_by = await self.hub.store.blocks_of(address)
        return _json({"address": address, "blocking": sorted(blocking),
                      "blocked_by": sorted(blocked_by)})

    @_endpoint
    async def add_block(self, request: Request) -> Response:
        self._refuse_edits_of_an_external_graph()
        blocker, blocked = self._block(request)
        added = await self.hub.add_blocks([(blocker, blocked)])
        self.audit.record(request, "block-add", f"{blocker} {blocked}", changed=len(added))
        return _json({"blocker": blocker, "blocked": blocked, "added": bool(added)},
                     201 if added else 200)

    @_endpoint
    async def remove_block(self, request: Request) -> Response:
        self._refuse_edits_of_an_external_graph()
        blocker, blocked = self._block(request)
        removed = await self.hub.remove_blocks([(blocker, blocked)])
        self.audit.record(request, "block-remove", f"{blocker} {blocked}",
                          changed=len(removed))
        return _json({"blocker": blocker, "blocked": blocked, "removed": bool(removed)})

    def _block(self, request: Request) -> tuple[str, str]:
        blocker = _address(request.path_params["blocker"])
        blocked = _address(request.path_params["blocked"])
        if blocker == blocked:
            raise ApiError(400, "a user cannot block themselves")
        return blocker, blocked

    # ----------------------------------------------------------- presence

    @_endpoint
    async def inject_presence(self, request: Request) -> Response:
        body = _parse_json(await _read_body(request, MAX_PRESENCE_BYTES))
        users = body.get("users") if isinstance(body, dict) else body
        if not isinstance(users, list):
            raise ApiError(400, 'expected a JSON list of {"address", "realm", "x", "y"} '
                                'objects, or {"users": [...]}')
        engine = self.hub.engine
        valid: list[tuple[str, Position]] = []
        errors = []
        for index, item in enumerate(users):
            try:
                address, position = _synthetic_user(item)
            except ValueError as e:
                errors.append({"index": index, "message": str(e)})
                continue
            problem = engine.validate_position(position)
            if problem is not None:
                errors.append({"index": index, "message": problem})
                continue
            valid.append((address, position))
        if errors:
            raise ApiError(400, f"{len(errors)} invalid user{'s' if len(errors) != 1 else ''}; "
                                "nobody was marked online",
                           errors=errors[:MAX_LISTED_ERRORS], error_count=len(errors))
        for address, position in valid:
            self.hub.inject_presence(address, position)
        self.audit.record(request, "presence-inject", f"{len(valid)} synthetic users",
                          changed=len(valid))
        return _json({"injected": len(valid), "now_ms": self.hub.now_ms()})


# -------------------------------------------------------------- audit trail


class AuditTrail:
    """One log line per change made through the admin API: who, what, how many.

    `seed friendships` sends a large file as many requests and scripts call
    `friends add` in loops, so lines are rate-limited per (action, client):
    the first of a burst is written, the next one after AUDIT_INTERVAL_S
    carries the count of those in between and their total changes.
    """

    def __init__(self, token_required: bool, interval_s: float = 10.0) -> None:
        self.token_required = token_required
        self.limit = RateLimit(interval_s)
        # Changes made by the lines the rate limit held back, per cause.
        self._held: dict[tuple[str, str], int] = {}

    def record(self, request: Request, action: str, what: str, *, changed: int) -> None:
        client = request.client.host if request.client is not None else "unknown"
        agent = request.headers.get("user-agent", "")
        who = client + (" (token)" if self.token_required else "")
        cause = (action, who)
        note = self.limit.allow(cause)
        if note is None:
            self._held[cause] = self._held.get(cause, 0) + changed
            return
        held = self._held.pop(cause, 0)
        if note and held:
            note = note[:-1] + f", {held} changes)"
        audit_log.info("admin %s by %s%s: %s, %d changed%s", action, who,
                       f" [{agent}]" if agent else "", what, changed, note,
                       extra={"fields": {"event": "admin", "action": action, "client": client,
                                         "user_agent": agent, "what": what,
                                         "changed": changed}})


# ---------------------------------------------------------------- helpers


def _address(text: str) -> str:
    try:
        return normalize_address(text)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def _presence_json(presence: Presence) -> dict[str, Any]:
    position = presence.position
    return {
        "address": presence.address,
        "online": presence.online,
        "realm": position.realm if position is not None else None,
        "x": position.x if position is not None else None,
        "y": position.y if position is not None else None,
        "last_seen_ms": presence.last_seen_ms,
    }


def _synthetic_user(item: object) -> tuple[str, Position]:
    if not isinstance(item, dict):
        raise ValueError('expected an object {"address", "realm", "x", "y"}')
    missing = [k for k in ("address", "realm", "x", "y") if k not in item]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    address, realm, x, y = item["address"], item["realm"], item["x"], item["y"]
    if not isinstance(address, str):
        raise ValueError("address must be a string")
    if not isinstance(realm, str):
        raise ValueError("realm must be a string")
    # bool is an int in Python, but not a coordinate.
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
        raise ValueError("x and y must be integers")
    return normalize_address(address), Position(realm, x, y)


class ImportParser:
    """The lines of an import body, fed in pieces of any size; no I/O (runs in a thread).

    Lines end at `\n`, `\r\n` or `\r`, as when the daemon reads --friends, even where a
    piece ends between `\r` and `\n`, so line numbers agree with any editor's. Keeps the
    distinct friendships in order, and the first MAX_LISTED_ERRORS errors with their count.
    A body that starts a file (`first_line` 1) may begin with a byte-order mark and a header
    line, as a spreadsheet writes them.
    """

    def __init__(self, first_line: int = 1) -> None:
        self._at_start = first_line == 1
        self._decoder = io.IncrementalNewlineDecoder(
            codecs.getincrementaldecoder("utf-8")(), translate=True)
        self._partial = ""
        self._bytes = 0
        self.lines = 0
        self.paired_lines = 0
        self.pairs: dict[Friendship, None] = {}
        self.errors: list[LineError] = []
        self.error_count = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        """Parse the complete lines in `data` (all of them if `final`); raises ApiError."""
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as e:
            raise ApiError(400, f"body is not UTF-8 (byte {self._bytes + e.start})") from None
        self._bytes += len(data)
        lines = (self._partial + text).split("\n")
        self._partial = "" if final else lines.pop()
        if final and lines and lines[-1] == "":
            lines.pop()  # the body ended with a line break
        number = self.lines
        pairs = self.pairs
        for line in lines:
            number += 1
            if self._at_start:
                if number == 1:
                    line = line.removeprefix(BOM)
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    self._at_start = False
                    if is_header(stripped):
                        continue
            try:
                pair = parse_friendship_line(line)
            except ValueError as e:
                self.error_count += 1
                if len(self.errors) < MAX_LISTED_ERRORS:
                    self.errors.append(LineError(number, str(e)))
                continue
            if pair is not None:
                self.paired_lines += 1
                pairs[pair] = None
        self.lines = number


async def _parse_import(
    request: Request, limiter: trio.CapacityLimiter, first_line: int
) -> ImportParser:
    """Read and parse an import body in steps of IMPORT_STEP_BYTES, each in a worker thread."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise ApiError(413, f"request body larger than {MAX_IMPORT_BYTES} bytes")
    parser = ImportParser(first_line)
    pending: list[bytes] = []
    pending_bytes = size = 0
    # Closed explicitly: leaving it early (413) must not leave it to the garbage collector.
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_IMPORT_BYTES:
                raise ApiError(413, f"request body larger than {MAX_IMPORT_BYTES} bytes")
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= IMPORT_STEP_BYTES:
                data = b"".join(pending)
                pending.clear()
                pending_bytes = 0
                await trio.to_thread.run_sync(parser.feed, data, limiter=limiter)
    await trio.to_thread.run_sync(parser.feed, b"".join(pending), True, limiter=limiter)
    return parser


def _int_param(request: Request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body is not UTF-8 (byte {e.start})") from None


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(_utf8(body))
    except json.JSONDecodeError as e:
        raise ApiError(400, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
