"""What a person reads while a long command runs: one plain line per event on the terminal, and
everything else (Ray's status tables, every worker's output, library warnings) in a log file.

The commands print through :func:`say`. :func:`capture` moves the process's own standard output
and error (file descriptors 1 and 2, so Ray's forwarded worker lines, its C++ core's messages and
logging handlers bound at import all follow) into a log file, while :func:`say` keeps writing to
the terminal, and into the log too so that it reads as one story. No line carries an escape
sequence: Ray's coloured worker prefixes are switched off wherever its output is not a terminal.
Ray Tune callbacks (which the Tuner pickles with its state) call :func:`say` as a module function,
so they hold no stream.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Echo = Callable[[str], None]

_echo: Echo | None = None  # the running command's; None: plain print
_warn: Echo | None = None  # its error stream's; None: print to stderr


def say(line: str) -> None:
    """One line for the person running the command."""
    (_echo or print)(line)


def warn(line: str) -> None:
    """An error or warning line: on the terminal's standard error even while output is captured."""
    if _warn is not None:
        _warn(line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def speaking_through(echo: Echo, warn_to: Echo | None = None) -> Iterator[None]:
    """Route :func:`say` (and so every callback's lines) to ``echo``, and :func:`warn` to ``warn_to``."""
    global _echo, _warn
    previous = _echo, _warn
    _echo, _warn = echo, warn_to
    try:
        yield
    finally:
        _echo, _warn = previous


@contextlib.contextmanager
def capture(log_path: Path, verbose: bool = False) -> Iterator[None]:
    """Send this process's stdout and stderr to ``log_path`` (appended); :func:`say` keeps the terminal.

    With ``verbose`` nothing moves (Ray's tables and worker lines stay on the console, uncoloured
    unless it is a terminal). The file descriptors come back however the block ends, so a traceback
    raised from inside still reaches the terminal.
    """
    if verbose:
        with _ray_colours(sys.stdout.isatty()):
            yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    terminal_errors = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (closed in finally, after the descriptors)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)

    def to(stream: Any) -> Echo:
        def write(line: str) -> None:
            stream.write(line + "\n")
            log.write(line + "\n")

        return write

    try:
        with _ray_colours(False), speaking_through(to(terminal), to(terminal_errors)):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
        terminal_errors.close()
        log.close()


@contextlib.contextmanager
def _ray_colours(on: bool) -> Iterator[None]:
    """Ray colours its worker prefixes unless ``RAY_COLOR_PREFIX=0`` (read when it prints)."""
    previous = os.environ.get("RAY_COLOR_PREFIX")
    if not on:
        os.environ["RAY_COLOR_PREFIX"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_COLOR_PREFIX", None)
        else:
            os.environ["RAY_COLOR_PREFIX"] = previous


def compact(value: Any) -> str:
    """A value as a person reads it in one line (floats to 4 significant digits)."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``done / total``, elapsed and an estimate of what is left, from the pace so far."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._start_done = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a resumed search: the pace is measured afresh from here."""
        self.__dict__.update(state, started=time.monotonic(), _start_done=state["done"])

    def advance(self) -> None:
        self.done += 1

    def line(self, unit: str, extra: str = "") -> str:
        elapsed = time.monotonic() - self.started
        finished_here = self.done - self._start_done
        left = max(self.total - self.done, 0)
        eta = duration(elapsed / finished_here * left) if finished_here and left else ("0s" if not left else "?")
        return f"progress: {self.done}/{self.total} {unit}{extra}, {duration(elapsed)} elapsed, ETA {eta}"
