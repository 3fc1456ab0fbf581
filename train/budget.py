"""Training to a time budget (``cifar-train --time 2m``), and the figures that say how long a
run will take.

A machine's speed is known only once it trains, so a budgeted run first times a few real steps
(``Probe``), then ``plan`` turns what is left of the budget into a number of optimizer steps,
and the one-cycle learning-rate curve is laid over exactly those steps: the run ends, schedule
complete, when the time is up, on a fast machine or a slow one. The budget counts the whole
command (importing TensorFlow, loading the data, every evaluation and save), as a user's clock
does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from runtime.errors import OptionError

MIN_BUDGET = 10.0  # seconds: less leaves no time to measure the machine, let alone train
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")


def parse_duration(text: str) -> float:
    """"90s", "2m", "1.5h", "1h30m" or a bare number of seconds -> seconds; OptionError else."""
    compact = str(text).strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact or (len(parts) > 1 and not all(u for _, u in parts)):
        raise OptionError(f"--time {text!r}: give a duration such as 90s, 2m, 1.5h or 1h30m")
    seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds < MIN_BUDGET:
        raise OptionError(f"--time {text}: at least {MIN_BUDGET:.0f}s (the first steps alone measure the machine)")
    return seconds


def format_duration(seconds: float) -> str:
    """45 -> "45 s", 150 -> "2.5 min", 7200 -> "2.0 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Speed:
    """What the first steps measured."""

    step_s: float  # seconds an optimizer step takes, once compiled
    first_step_s: float  # the first step of a freshly compiled model: tracing and compiling included
    batch_size: int

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.step_s


@dataclass(frozen=True)
class Plan:
    steps: int  # optimizer steps in all: the learning-rate curve spans exactly these
    epochs: int  # passes, the last one cut short when ``steps`` ends inside it
    seconds: float  # what the plan expects training (from now) to take
    finish_s: float = 0.0  # of which the last epoch's evaluation and saves, after its last step


def plan(remaining_s: float, speed: Speed, steps_per_epoch: int, epoch_overhead_s: float,
         restart_s: float = 0.0, min_steps: int = 1, finish_s: float = 0.0) -> Plan:
    """The most optimizer steps that fit in ``remaining_s``: each costs ``speed.step_s``, each
    epoch begun ``epoch_overhead_s`` (its augmentation, evaluation and saves, ``finish_s`` of it
    after its last step), and the recompiled model ``restart_s`` once. Never fewer than
    ``min_steps``."""
    steps = max(min_steps, int((remaining_s - restart_s) / speed.step_s))

    def cost(n: int) -> float:
        return restart_s + n * speed.step_s + math.ceil(n / steps_per_epoch) * epoch_overhead_s

    while steps > min_steps and cost(steps) > remaining_s:
        # Each epoch begun costs its overhead: take the steps back to what the time pays for.
        over = cost(steps) - remaining_s
        steps = max(min_steps, steps - max(1, int(math.ceil(over / speed.step_s))))
    while cost(steps + 1) <= remaining_s:  # an epoch's overhead given back may pay for a few more
        steps += 1
    return Plan(steps=steps, epochs=math.ceil(steps / steps_per_epoch), seconds=cost(steps), finish_s=finish_s)


def estimate_line(speed: Speed, precision: str, why: str, total_steps: int, steps_per_epoch: int,
                  epoch_overhead_s: float = 0.0) -> str:
    """"speed: 1,588 images/s (0.64 s a step); float32 (this CPU has no bfloat16 ...); an
    epoch ~30 s, the run ~3.1 min"."""
    epoch_s = steps_per_epoch * speed.step_s + epoch_overhead_s
    run_s = total_steps * speed.step_s + math.ceil(total_steps / steps_per_epoch) * epoch_overhead_s
    return (f"speed: {speed.images_per_s:,.0f} images/s ({speed.step_s:.2f} s a step of {speed.batch_size:,}); "
            f"{precision} ({why}); an epoch ~{format_duration(epoch_s)}, the run ~{format_duration(run_s)}")


LONG_RUN_S = 3 * 3600  # a run expected to take longer than this is told so, with what to do instead
