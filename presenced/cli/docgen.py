"""Man pages and shell completions, generated from the command line itself.

    python -m presenced.cli.docgen            # rewrite man/ and completions/
    python -m presenced.cli.docgen --check    # exit 1 if either is stale

(scripts/gen-docs and scripts/check-docs run these.)

Man pages are roff written straight from the Click command tree that Typer
builds (`typer.main.get_command`), walking every command and subcommand, so
a new command gets a page without anyone touching this file, and every
option appears with the same help, default, range and environment variable
as in `--help`. This avoids help2man (a system package, and it parses help
text laid out for a terminal) and click-man (it filters options on
`isinstance(x, click.Option)`, which Typer's options are not, so it drops
them). The output depends on nothing but the code: no date, no
terminal width, no environment.

Completion scripts are Typer's own (`_PRESENCED_COMPLETE=source_<shell>`).
They call back into `presenced` for the actual candidates, so they do not
change when commands are added.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer.main

from presenced import __version__

PROG = "presenced"
ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"bash": "presenced.bash", "zsh": "_presenced", "fish": "presenced.fish"}

EXIT_STATUS = (
    ("0", "Success."),
    ("1", "An error, reported on one line on standard error: the daemon could not be "
          "reached, refused the token, or rejected the request (malformed input is listed "
          "with line numbers)."),
    ("2", "Usage error: an unknown option, a malformed argument such as an address, or, "
          "for serve, a configuration that cannot be served (a port in use, a non-loopback "
          "admin address without a token)."),
    ("130", "Interrupted with Ctrl-C."),
)
SERVE_EXIT_STATUS = (
    ("0", "Stopped by SIGTERM or SIGINT (Ctrl-C) after closing every connection, or during "
          "start-up; with --check, the configuration is valid."),
    ("1", "Start-up did not complete within --startup-timeout (Redis never answered); one "
          "line on standard error says what it was waiting for."),
    ("2", "A usage error (one line on standard error: an unknown option, a value out of "
          "range such as a port past 65535, an unknown --log-level) or a configuration that "
          "cannot be served: a port in use, an unreadable or malformed --friends file, a "
          "--redis-url that is not redis://, rediss:// or unix://, or a non-loopback "
          "--admin-host without PRESENCED_ADMIN_TOKEN."),
)


# ------------------------------------------------------------------- model


@dataclass
class Page:
    path: tuple[str, ...]  # ("presenced", "seed", "friendships")
    command: Any  # a Typer/Click command
    ctx: Any  # its Click context

    @property
    def name(self) -> str:
        return "-".join(self.path)

    @property
    def invocation(self) -> str:
        return " ".join(self.path)


def walk(app: typer.Typer) -> list[Page]:
    """Every visible command of `app`, depth first, in help order."""
    root = typer.main.get_command(app)
    pages: list[Page] = []

    def visit(command: Any, path: tuple[str, ...], parent: Any) -> None:
        ctx = command.context_class(command, info_name=path[-1], parent=parent,
                                    **command.context_settings)
        pages.append(Page(path, command, ctx))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    visit(sub, (*path, name), ctx)

    visit(root, (PROG,), None)
    return pages


# -------------------------------------------------------------------- roff


def escape(text: str) -> str:
    """Text for a roff line: literal backslashes and minus signs, ASCII only."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)
    # A line starting with . or ' would be read as a request.
    if out.startswith((".", "'")):
        out = "\\&" + out
    return out


def paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each reflowed onto one line."""
    text = inspect.cleandoc(text or "").split("\f", 1)[0]
    out = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip() != "\b"]
        if lines:
            out.append(" ".join(lines))
    return out


def _metavar(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return param.metavar
    if param.param_type_name == "argument":
        return param.human_readable_name.upper()
    # Typer describes types as "<int>", "<float range>", "<list[str]>"…
    shown = str(param.display_type(ctx) or "value").strip("<>").removesuffix(" range")
    if shown.startswith("list[") and shown.endswith("]"):
        shown = shown[5:-1]
    return {"str": "TEXT", "int": "INTEGER"}.get(shown, shown).upper()


def _param_entry(param: Any, ctx: Any) -> list[str] | None:
    record = param.get_help_record(ctx)
    if record is None:
        return None
    help_text = record[1]
    extra = ""
    # get_help_record appends "  [env var: …; default: …; range; required]".
    head, sep, tail = help_text.rpartition("  [")
    if sep and tail.endswith("]"):
        help_text, extra = head, "[" + tail
    elif help_text.startswith("[") and help_text.endswith("]") and not param.help:
        help_text, extra = "", help_text
    metavar = _metavar(param, ctx)
    if param.param_type_name == "argument":
        label = f"\\fI{escape(metavar)}\\fR"
    else:
        # Sorted (short first): Typer's order for some options, such as -h and
        # --help, varies with the hash seed.
        opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))
        names = ", ".join(f"\\fB{escape(o)}\\fR" for o in [*opts, *param.secondary_opts])
        label = names + (f" \\fI{escape(metavar)}\\fR" if metavar else "")
    lines = [".TP", label]
    if help_text:
        lines.append(escape(help_text))
    if extra:
        if help_text:
            lines.append(".br")
        lines.append(escape(extra))
    return lines


def _synopsis(command: Any) -> str:
    if hasattr(command, "list_commands"):
        return "[OPTIONS] COMMAND [ARGS]..."
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if param.param_type_name != "argument" or getattr(param, "hidden", False):
            continue
        name = param.metavar or param.human_readable_name.upper()
        piece = name if param.required else f"[{name}]"
        pieces.append(piece + ("..." if param.nargs != 1 else ""))
    return " ".join(pieces)


def _envvars(params: list[Any]) -> list[tuple[str, str]]:
    seen = []
    for param in params:
        envvar = getattr(param, "envvar", None)
        names = [envvar] if isinstance(envvar, str) else list(envvar or ())
        for name in names:
            label = param.opts[0] if param.opts else param.human_readable_name
            seen.append((name, label))
    return seen


def render(page: Page, pages: list[Page]) -> str:
    command, ctx = page.command, page.ctx
    helps = paragraphs(command.help or "")
    summary = helps[0] if helps else ""
    out = [
        ".\\\" Generated from the presenced command line by scripts/gen-docs; do not edit.",
        f'.TH "{escape(page.name.upper())}" "1" "" "{PROG} {__version__}" "{PROG} manual"',
        # No hyphenation or justification: option names must stay copyable.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{escape(page.name)} \\- {escape(summary.rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {escape(page.invocation)}",
        escape(_synopsis(command)),
        ".SH DESCRIPTION",
    ]
    for text in helps or [summary]:
        out += [".PP", escape(text)]

    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    for title, group in (("ARGUMENTS", arguments), ("OPTIONS", options)):
        entries = [e for p in group if (e := _param_entry(p, ctx)) is not None]
        if entries:
            out.append(f".SH {title}")
            for entry in entries:
                out += entry

    children = [p for p in pages if p.path[:-1] == page.path]
    if children:
        out.append(".SH COMMANDS")
        for child in children:
            child_help = paragraphs(child.command.help or "")
            out += [".TP", f"\\fB{escape(child.name)}\\fR(1)",
                    escape(child_help[0] if child_help else "")]

    envvars = _envvars(params)
    if envvars:
        out.append(".SH ENVIRONMENT")
        for name, label in envvars:
            out += [".TP", f"\\fB{escape(name)}\\fR", escape(f"Sets {label}.")]

    if not children:
        out.append(".SH EXIT STATUS")
        for code, text in SERVE_EXIT_STATUS if page.path == (PROG, "serve") else EXIT_STATUS:
            out += [".TP", f"\\fB{code}\\fR", escape(text)]

    if page.path == (PROG,):
        related = pages[1:]
    else:
        related = [p for p in pages if p is not page and (
            p.path == page.path[:-1] or p.path[:-1] == page.path[:-1] or p.path == (PROG,))]
    if related:
        out.append(".SH SEE ALSO")
        refs = sorted({f"\\fB{escape(p.name)}\\fR(1)" for p in related})
        out.append(",\n".join(refs))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------- generation


def man_pages(app: typer.Typer) -> dict[str, str]:
    pages = walk(app)
    return {f"{page.name}.1": render(page, pages) for page in pages}


def completion_scripts() -> dict[str, str]:
    """Typer's completion scripts, exactly as `_PRESENCED_COMPLETE=source_<shell>` prints them.

    Run in a child process because Typer prints them and exits; the program
    name is fixed so the scripts do not depend on how Python was started.
    """
    code = f"from presenced.cli.main import app; app(prog_name={PROG!r})"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRESENCED_", "_PRESENCED"))}
    env.update({"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"})
    scripts = {}
    for shell, filename in SHELLS.items():
        env["_PRESENCED_COMPLETE"] = f"source_{shell}"
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True)
        # Stripped: zsh only autoloads a completion file whose first line is #compdef.
        scripts[filename] = result.stdout.strip() + "\n"
    return scripts


def generated() -> dict[Path, str]:
    from presenced.cli.main import app

    files = {Path("man") / name: text for name, text in man_pages(app).items()}
    files.update({Path("completions") / name: text
                  for name, text in completion_scripts().items()})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if man/ or completions/ is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    files = generated()
    managed = {"man": "*.1", "completions": "*"}
    stale = []
    for directory, pattern in managed.items():
        for path in sorted((args.root / directory).glob(pattern)):
            relative = path.relative_to(args.root)
            if path.is_file() and relative not in files:
                stale.append((relative, path.read_text(), None))
    for relative, text in sorted(files.items()):
        path = args.root / relative
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append((relative, current, text))
    if args.check:
        for relative, current, text in stale:
            what = "missing" if current is None else "obsolete" if text is None else "stale"
            print(f"{relative}: {what}", file=sys.stderr)
            if current is not None and text is not None:
                sys.stderr.writelines(difflib.unified_diff(
                    current.splitlines(keepends=True), text.splitlines(keepends=True),
                    f"{relative} (committed)", f"{relative} (generated)", n=1))
        if stale:
            print("man pages or completions are out of date: run scripts/gen-docs and commit",
                  file=sys.stderr)
            return 1
        return 0
    for relative, _, text in stale:
        path = args.root / relative
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        print(f"{'removed' if text is None else 'wrote'} {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
