"""The exception hierarchy shared by every cifar-edge package.

Library code raises these with messages that say what failed, where, and how to fix it.
The CLIs turn them into one line on stderr and a non-zero exit (see ``runtime.cli.common``).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # a CifarEdgeError: bad input, bad data, bad model
    USAGE = 2  # click's own code for bad arguments
    PARTIAL = 3  # some inputs failed, the others were processed
    THRESHOLD = 4  # a parity or accuracy threshold was violated
    INTERRUPTED = 130  # Ctrl+C / SIGTERM
    # A worker of a multi-worker run lost another worker: restarting every worker resumes the
    # run. 138 is the code Kubeflow's training operator keeps for "retryable, user-defined"
    # (its restartPolicy ExitCode restarts a pod on it, and treats 1 as permanent).
    RETRY = 138


class CifarEdgeError(Exception):
    """Base of every error a user can cause and fix."""

    exit_code = ExitCode.ERROR
    # How the CLI line starts after the command's name: a stop the user asked for (Ctrl+C,
    # SIGTERM) that saved its work is not an error, and says so by leaving this out.
    label = "error: "


class DataError(CifarEdgeError):
    """Training/evaluation data is missing, malformed or unreadable."""


class ModelError(CifarEdgeError):
    """A model file is missing, corrupt, or does not fit the contract."""


class ImageError(CifarEdgeError):
    """An input image cannot be read or decoded. ``reason`` names the check that failed
    ("missing", "empty", "too_large", "not_image", "corrupt"; "" for others), so a caller such
    as the web server can answer with the matching status."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class ProviderError(CifarEdgeError):
    """A requested onnxruntime execution provider is not available."""


class SourceError(CifarEdgeError):
    """A camera or video source cannot be opened or stopped delivering frames."""


class OptionError(CifarEdgeError):
    """An option's value cannot be used (a malformed list, a value out of range)."""

    exit_code = ExitCode.USAGE


class ThresholdError(CifarEdgeError):
    """A parity or accuracy check failed its threshold."""

    exit_code = ExitCode.THRESHOLD


def summary(exc: BaseException, limit: int = 300) -> str:
    """What an exception from another library says, fit for one line of ours: its first line,
    or that line's first sentence when the line is long (Keras appends whole configs); its type
    when it says nothing. What is still over ``limit`` ends at a word, with " [...]" to say so."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(line) > limit and ". " in line:
        line = line[: line.index(". ") + 1]
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " [...]"
    return line


def listed(names, most: int = 10) -> str:
    """``(a, b, c)``, or the first ``most`` and how many in all: names fit for one line."""
    shown = ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
    return f"({shown})"
