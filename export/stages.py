"""Stages of an export, timed one way: ``with stage("convert"): ...``.

Each stage's seconds go into ``Stages.seconds`` (the parity report's ``stages``; a stage that
runs again adds to its figure) and, as it ends, one line to the log: what a log file shows
where a terminal also has progress bars.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

PREFIX = "export: "

# What each timed stage did, for its line in the log; None: no line (the CLI names each file saved).
STAGE_LINES = {
    "load": "loaded the Keras model", "data": "read the data", "fold": "folded BatchNorm and scaling into the layers",
    "convert": "converted to ONNX",
    "check": "checked the ONNX graph", "parity_keras": "ran Keras on the parity images",
    "quantize_int8": "quantized to INT8", "convert_fp16": "converted to FP16", "save": None,
    "parity_keras_mirror": "ran Keras on the mirrored parity images",
    "check_preprocessing": "measured the model's accuracy under each pixel scaling",
}


@dataclass
class Stage:
    """A running stage: what its line will say (settable inside it: None, no line), and once it
    has ended, how long it took."""

    line: str | None
    seconds: float = 0.0


class Stages:
    """The stages of one job: ``with stages(name) as stage: ...`` times one."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.log = log  # gets one line per stage; None: silent
        self.seconds: dict[str, float] = {}  # stage → seconds, rounded to 0.01

    @contextmanager
    def __call__(self, name: str, line: str | None = None) -> Iterator[Stage]:
        """Time the ``with`` block as stage ``name``; its line says ``line``, else what
        ``STAGE_LINES`` says (else the name). A block that raises is not counted."""
        stage = Stage(line if line is not None else STAGE_LINES.get(name, name))
        start = time.perf_counter()
        yield stage
        stage.seconds = time.perf_counter() - start
        self.seconds[name] = round(self.seconds.get(name, 0.0) + stage.seconds, 2)
        if stage.line:
            self.say(f"{stage.line} ({stage.seconds:.1f} s)")

    def say(self, line: str) -> None:
        """One line to the log, as the stages' are."""
        if self.log is not None:
            self.log(PREFIX + line)
