"""One coverage-guided fuzzer (atheris over libFuzzer) for a target of fuzz/targets.py.

    python -m fuzz.fuzz TARGET [libFuzzer options] [corpus directories]

Run from the repository root; `scripts/fuzz` runs every target for a bounded time over the
corpus in fuzz/corpus/TARGET. presenced, wsproto and the targets are instrumented for coverage.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["presenced", "wsproto", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.fuzz {{{','.join(TARGETS)}}} [libFuzzer options]")
    check = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
