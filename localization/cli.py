"""Shared command-line plumbing: ``--set`` overrides, the one-line error contract, atomic output files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localization.errors import InputError

SET_HELP = (
    "override a config value, e.g. --set train.lr=1.0e-4 --set data.features=[i3d] (value parsed as YAML); repeatable"
)


def add_set_argument(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``args.overrides``), the same in every command."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


Command = Callable[[list[str] | None], int | None]


def exit_status(main: Command, argv: list[str] | None = None) -> int:
    """Run a command's ``main``: bad input (:class:`InputError`) prints one line on stderr and gives
    status 2, Ctrl-C gives 130, no traceback; otherwise ``main``'s own status (None: 0)."""
    try:
        code = main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


def run(main: Command, argv: list[str] | None = None) -> None:
    """``python -m`` entry point of every command: :func:`exit_status` as the process's status."""
    sys.exit(exit_status(main, argv))


def write_json(path: Path, payload: Any) -> None:
    """Write JSON via a temp file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
