"""The layers of presenced, read from the source with `ast` (nothing is imported).

From the bottom: the model and the close codes, the wire (rpc),
authentication and the profile source (HTTP to a Catalyst); the engine;
the RPC modules (services) beside the stores; the friends database source
(graph) above the stores; the server; the command line, the simulator and
the client at the top.
A module may import its own layer or a lower one, never a higher one: a
store that imported the server could not be used (or tested) without it,
and any change to the server would ripple down.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "presenced"

TOP = ("presenced.server", "presenced.cli", "presenced.simulate", "presenced.client")

# Source (a package directory or a module file, relative to presenced/) ->
# modules it must not import (nor anything under them).
BELOW_ENGINE = ("presenced.engine", "presenced.services", "presenced.store", "presenced.graph")

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "model.py": (*TOP, *BELOW_ENGINE, "presenced.rpc", "presenced.auth"),
    "closes.py": (*TOP, *BELOW_ENGINE, "presenced.rpc", "presenced.auth", "presenced.model"),
    "rpc": (*TOP, *BELOW_ENGINE),
    "auth": (*TOP, *BELOW_ENGINE),
    "engine": (*TOP, "presenced.services", "presenced.store", "presenced.graph"),
    # The modules know presence and the wire, not where state is kept: they reach the store
    # only through the session the server gives them.
    "services": (*TOP, "presenced.store", "presenced.graph"),
    "store": (*TOP, "presenced.services", "presenced.graph"),
    # The friends database source: above the stores (it applies changes through their
    # types), below the server (which gives it the hub).
    "graph": (*TOP, "presenced.services"),
    "profiles": (*TOP, *BELOW_ENGINE, "presenced.rpc", "presenced.auth"),
    # The log set-up is used by every layer, so it imports none of them.
    "logs.py": (*TOP, *BELOW_ENGINE, "presenced.rpc", "presenced.auth", "presenced.model"),
    # The WebSocket layer sits below the server and the simulator, beside the wire.
    "ws": (*TOP, *BELOW_ENGINE, "presenced.rpc", "presenced.auth", "presenced.model"),
    # A virtual user talks to its worker through `user.UserHost` (no import cycle).
    "simulate/user.py": ("presenced.simulate.worker",),
}

# What the WebSocket layer may import at all: the standard library, wsproto,
# trio, the close table and itself (pinned dependencies, nothing else).
WS_ALLOWED = ("wsproto", "trio", "presenced.closes", "presenced.ws", "__future__")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones resolved.

    `from a import b` yields both `a` and `a.b` (b may be a submodule), so
    `from presenced import server` counts as importing presenced.server.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    # The package a relative import starts from.
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            found.append((node.lineno, origin))
            found.extend((node.lineno, f"{origin}.{alias.name}") for alias in node.names)
    return found


def is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def sources(entry: str) -> list[Path]:
    path = PACKAGE / entry
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def test_every_layer_exists() -> None:
    for entry in FORBIDDEN:
        assert sources(entry), f"presenced/{entry}: no source found (layer renamed?)"


def test_lower_layers_do_not_import_higher_ones() -> None:
    # (file, line, forbidden layer) -> the module named by the import.
    violations: dict[tuple[str, int, str], str] = {}
    for entry, forbidden in FORBIDDEN.items():
        for path in sources(entry):
            rel = str(path.relative_to(ROOT))
            for line, module in imported_modules(path):
                for prefix in forbidden:
                    key = (rel, line, prefix)
                    # `from a import b` gives a and a.b: name the shorter.
                    if is_under(module, prefix) and (
                        key not in violations or len(module) < len(violations[key])
                    ):
                        violations[key] = module
    report = [f"{rel}:{line} imports {module} (must not import {prefix})"
              for (rel, line, prefix), module in sorted(violations.items())]
    assert not report, "layering violations:\n" + "\n".join(report)


def test_the_websocket_layer_imports_only_the_stdlib_wsproto_and_trio() -> None:
    import sys

    stdlib = sys.stdlib_module_names
    report = []
    for path in sources("ws"):
        for line, module in imported_modules(path):
            top = module.partition(".")[0]
            if top in stdlib or any(is_under(module, m) for m in WS_ALLOWED):
                continue
            report.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not report, "\n".join(report)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The check above is only as good as imported_modules: make sure it
    # catches plain, from- and relative imports.
    pkg = tmp_path / "presenced" / "store"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "import presenced.server.app\n"
        "from presenced.cli import main\n"
        "from presenced import client\n"
        "from ..simulate import plan\n"
        "from .. import server\n"
        "def f() -> None:\n"
        "    import presenced.engine\n"
    )
    modules = {m for _, m in imported_modules(pkg / "x.py", root=tmp_path)}
    assert {
        "presenced.server.app",
        "presenced.cli",
        "presenced.client",
        "presenced.simulate",
        "presenced.server",
        "presenced.engine",
    } <= modules
