"""Man pages generated from the CLI: complete, deterministic, and checked for staleness."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import typer
import typer.main

from presenced.cli import docgen
from presenced.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_has_a_page_with_every_option():
    pages = docgen.man_pages(app)
    root = typer.main.get_command(app)
    for page in docgen.walk(app):
        text = pages[f"{page.name}.1"]
        for param in page.command.get_params(page.ctx):
            for opt in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
                if opt.startswith("-"):
                    assert f"\\fB{docgen.escape(opt)}\\fR" in text, (page.name, opt)
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                assert docgen.escape(envvar) in text
    names = {page.name for page in docgen.walk(app)}
    for expected in ("presenced", "presenced-serve", "presenced-who-online",
                     "presenced-friends-add", "presenced-friends-remove",
                     "presenced-friends-list", "presenced-seed-friendships",
                     "presenced-seed-presence"):
        assert expected in names
    assert len(names) == len(pages)
    assert root.name == "presenced"


def test_new_commands_are_picked_up():
    extra = typer.Typer()

    @extra.command()
    def hello(name: str = typer.Option("x", "--name", help="Who to greet.")) -> None:
        """Say hello."""

    @extra.command()
    def other() -> None:
        """Another."""

    pages = docgen.man_pages(extra)
    assert "\\fB\\-\\-name\\fR" in pages["presenced-hello.1"]
    assert "Who to greet." in pages["presenced-hello.1"]


def test_roff_escaping():
    assert docgen.escape(".starts with a dot") == "\\&.starts with a dot"
    assert docgen.escape("back\\slash --opt") == "back\\eslash \\-\\-opt"
    assert docgen.escape("0x…") == "0x\\[u2026]"


def test_pages_are_deterministic_and_render(tmp_path):
    first = docgen.man_pages(app)
    assert first == docgen.man_pages(app)
    for name, text in first.items():
        assert re.search(r"\d{4}-\d{2}-\d{2}", text) is None, name
        assert text.isascii(), name
    if shutil.which("groff"):
        out = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"],
                             input=first["presenced-serve.1"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stderr == ""


def test_committed_docs_are_current():
    result = subprocess.run([sys.executable, "-m", "presenced.cli.docgen", "--check",
                             "--root", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_detects_stale_missing_and_obsolete_files(tmp_path):
    shutil.copytree(ROOT / "man", tmp_path / "man")
    shutil.copytree(ROOT / "completions", tmp_path / "completions")
    check = [sys.executable, "-m", "presenced.cli.docgen", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, capture_output=True).returncode == 0
    (tmp_path / "man" / "presenced-serve.1").write_text("old\n")
    (tmp_path / "man" / "presenced-who-online.1").unlink()
    (tmp_path / "man" / "presenced-gone.1").write_text("removed command\n")
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 1
    assert "man/presenced-serve.1: stale" in result.stderr
    assert "man/presenced-who-online.1: missing" in result.stderr
    assert "man/presenced-gone.1: obsolete" in result.stderr
    assert "run scripts/gen-docs" in result.stderr
    fix = [sys.executable, "-m", "presenced.cli.docgen", "--root", str(tmp_path)]
    subprocess.run(fix, check=True, capture_output=True)
    assert subprocess.run(check, capture_output=True).returncode == 0


def test_completion_scripts_are_typers_own():
    scripts = docgen.completion_scripts()
    assert scripts["_presenced"].startswith("#compdef presenced\n")
    assert "complete -o default -F _presenced_completion presenced" in scripts["presenced.bash"]
    assert "_PRESENCED_COMPLETE=complete_fish" in scripts["presenced.fish"]
