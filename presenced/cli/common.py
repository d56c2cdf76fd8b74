"""What the operator commands share: reaching the admin API, options, errors, output.

The operator commands are plain synchronous HTTP clients of the daemon's
admin endpoint (docs/admin-api.md), so they need no event loop. Every
failure the operator can cause or fix (daemon not running, wrong token, bad
address, rejected input) ends as one line on stderr and a non-zero exit
status, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from presenced.model import normalize_address

if TYPE_CHECKING:
    from rich.console import Console

# httpx and rich are imported where used: shell completion imports this
# module on every TAB, and they take longer to import than the rest of it.

DEFAULT_ADMIN_URL = "http://127.0.0.1:8086"

# Exit statuses, documented in the man pages.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

AdminUrlOption = Annotated[str, typer.Option(
    "--admin-url", envvar="PRESENCED_ADMIN_URL", metavar="URL",
    help="Base URL of the daemon's admin endpoint.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="PRESENCED_ADMIN_TOKEN", show_default=False, metavar="TOKEN",
    help="Bearer token of the admin endpoint (prefer the environment variable: "
         "command lines are visible to other users).")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print one JSON document on stdout instead of human-readable output.")]

P = ParamSpec("P")
R = TypeVar("R")


class CliError(Exception):
    """An error to report on one line, exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, code)


def report(message: str) -> None:
    """A one-line message on stderr, prefixed like every other."""
    typer.echo(f"presenced: {message}", err=True)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Reports CliError on one line and turns Ctrl-C into exit status 130.

    With --json (a `json_output` argument) the error is also printed on
    stdout as `{"error": message, "code": exit status}`, so a script reading
    stdout always gets one JSON document; the exit status is the same.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("json_output"))
        try:
            return command(*args, **kwargs)
        except CliError as e:
            _report_error(str(e), e.code, as_json, getattr(e, "body", None))
            raise typer.Exit(e.code) from None
        except KeyboardInterrupt:
            _report_error("interrupted", EXIT_INTERRUPTED, as_json)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BaseExceptionGroup as group:
            # Ctrl-C inside a trio nursery arrives wrapped in a group.
            if group.subgroup(KeyboardInterrupt) is not None:
                _report_error("interrupted", EXIT_INTERRUPTED, as_json)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            raise

    return wrapper


def _report_error(message: str, code: int, as_json: bool, body: Any = None) -> None:
    if code != EXIT_INTERRUPTED:
        report(message)
    if as_json:
        document: dict[str, Any] = {"error": message, "code": code}
        if isinstance(body, dict):
            # The daemon's own details (the malformed lines of an import…).
            document["response"] = body
        print_json(document)


def address_argument(value: str, what: str = "address") -> str:
    """A user address from the command line, lower-cased; exits 2 if malformed."""
    try:
        return normalize_address(value)
    except ValueError:
        fail(f"not an {what}: {value!r} (expected 0x followed by 40 hex digits)", EXIT_USAGE)


def stdout_console() -> Console:
    from rich.console import Console

    # No markup or emoji codes: realms and file names are shown as they are.
    options: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False}
    console = Console(**options)
    if not console.is_terminal:
        # Wide enough for full addresses in pipes, where rich assumes 80 columns.
        console = Console(**options, width=max(console.width, 120))
    return console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, emoji=False)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def ago(now_ms: int, then_ms: int) -> str:
    """'12 s ago', '4 min ago', '3 h ago', '2 d ago' (times from the daemon's clock)."""
    seconds = max(0, (now_ms - then_ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


class AdminClient:
    """Calls the admin API; every failure becomes a CliError with a clear message."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        from presenced import __version__

        # Names the tool in the daemon's audit trail.
        headers = {"User-Agent": f"presenced/{__version__} {_command_name()}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            # trust_env=False: a proxy from the environment must not capture
            # calls to a daemon on loopback.
            self._http = httpx.Client(base_url=self.url, headers=headers, trust_env=False,
                                      timeout=httpx.Timeout(timeout, connect=5.0))
        except (httpx.InvalidURL, ValueError) as e:
            fail(f"invalid --admin-url {url!r}: {e}", EXIT_USAGE)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON body of a 2xx answer; raises CliError otherwise.

        A 4xx/5xx answer's body is kept on the error as `.body` so callers can
        report details (such as the malformed lines of an import).
        """
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as e:
            fail(f"cannot reach the admin endpoint at {self.url} ({_reason(e)}); "
                 "is `presenced serve` running? (see --admin-url)")
        except httpx.TimeoutException:
            fail(f"the admin endpoint at {self.url} did not answer in time")
        except httpx.UnsupportedProtocol:
            fail(f"invalid --admin-url {self.url!r}: expected http://HOST:PORT", EXIT_USAGE)
        except httpx.HTTPError as e:
            fail(f"request to the admin endpoint at {self.url} failed: {_reason(e)}")
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if status == 401:
            fail("the admin endpoint refused the token (401 Unauthorized): pass --token "
                 "or set PRESENCED_ADMIN_TOKEN to the daemon's token")
        if status >= 400:
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                message = body["error"]
            else:
                message = response.text.strip()[:200] or response.reason_phrase
            raise ApiFailure(f"{message} ({status})", status, body)
        return body


def _command_name() -> str:
    """`who-online`, `friends add`…: the subcommand this process runs."""
    words = [a for a in sys.argv[1:3] if a[:1].isalpha() and a.replace("-", "").isalpha()]
    return " ".join(words) or "cli"


class ApiFailure(CliError):
    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _reason(e: Exception) -> str:
    text = str(e)
    # httpx wraps OSError text like "[Errno 111] Connection refused".
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text or type(e).__name__
