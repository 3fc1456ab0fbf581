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


def progress_bar(total: int, desc: str, unit: str, quiet: bool | None = None):
    """A tqdm bar on stderr, or a disabled one (same methods, draws nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=not bars_wanted(quiet))


def plural(n: int, noun: str) -> str:
    """``plural(1, "step")`` → "1 step", ``plural(47, "step")`` → "47 steps"."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
