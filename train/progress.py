"""Progress for long work: a bar on a terminal, plain lines in a log.

A bar is drawn only when stderr is a terminal; in a log (stderr redirected, a CI job, nohup)
carriage-return frames would be noise, so callers print one plain line per stage or epoch
instead, which they do in both cases.
"""

from __future__ import annotations

import sys


def bars_wanted(quiet: bool | None = None) -> bool:
    """Whether to draw progress bars: ``quiet=None`` means "only on a terminal"."""
    if quiet is not None:
        return not quiet
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class _NoBar:
    """What ``progress_bar`` gives when no bar is drawn: tqdm's methods, doing nothing."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, quiet: bool | None = None):
    """A tqdm bar on stderr, or a bar that draws nothing (same methods) when bars are not
    wanted or tqdm is not installed (the runtime-only install reads data without it)."""
    if not bars_wanted(quiet):
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def plural(n: int, noun: str) -> str:
    """``plural(1, "step")`` → "1 step", ``plural(47, "step")`` → "47 steps"."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
