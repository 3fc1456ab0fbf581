"""``LiveMetrics``: the camera loop's counters, for ``/metrics`` (Prometheus text format) and
``cifar-run --camera --json``.

The format is written here, by hand (version 0.0.4 of Prometheus' text exposition format):
it is a few lines of text, and the runtime keeps its dependencies to what runs the model.
Times are in seconds, as Prometheus names them (``_seconds``); the JSON output keeps the
runtime's milliseconds.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.camera.loop import FrameResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "cifar_edge"
STAGES = ("read", "classify", "ort")  # waiting for a frame; Classifier.predict; of that, onnxruntime


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}" if labels else ""


class LiveMetrics:
    """Counters of the frames through the loop: ``observe`` from the camera loop's thread,
    ``prometheus_text`` and ``totals`` from any other (one lock)."""

    def __init__(self, class_names, threshold: float, model: str = ""):
        self.threshold = threshold  # a frame whose top probability is under this counts as unsure
        self.model = model
        self._lock = threading.Lock()
        self.frames = 0
        self.below = 0  # frames under the threshold
        self.collected = 0  # of those, saved by --collect
        self.reloads = 0  # models replaced while running (--reload)
        self.fps = 0.0  # the loop's smoothed rate at the newest frame
        self.per_class = {name: 0 for name in class_names}  # top label -> frames
        self.stage_s = {stage: 0.0 for stage in STAGES}  # summed seconds per stage
        self.last_ms = {stage: 0.0 for stage in STAGES}  # the newest frame's milliseconds

    def observe(self, result: "FrameResult", collected: bool = False) -> None:
        stages_ms = {"read": result.read_ms, "classify": result.classify_ms, "ort": result.ort_ms}
        label = result.prediction.label
        with self._lock:
            self.frames += 1
            self.below += result.prediction.confidence < self.threshold
            self.collected += collected
            self.fps = result.fps
            self.per_class[label] = self.per_class.get(label, 0) + 1
            for stage, ms in stages_ms.items():
                self.stage_s[stage] += ms / 1000.0
                self.last_ms[stage] = ms

    def reloaded(self, model: str) -> None:
        with self._lock:
            self.reloads += 1
            self.model = model

    def totals(self) -> dict:
        """The running totals as JSON-ready data (``--json``'s ``totals``)."""
        with self._lock:
            return {"frames": self.frames, "below_threshold": self.below,
                    "below_share": round(self.below / self.frames, 6) if self.frames else 0.0,
                    "collected": self.collected, "reloads": self.reloads}

    def prometheus_text(self) -> str:
        with self._lock:
            frames, below, fps = self.frames, self.below, self.fps
            families = [
                ("frames", "counter", "Frames classified by the camera loop.", [({}, frames)]),
                ("fps", "gauge", "Frames per second through the loop (smoothed).", [({}, round(fps, 3))]),
                ("stage_last_milliseconds", "gauge", "The newest frame's time in each stage, in ms.",
                 [({"stage": s}, round(self.last_ms[s], 3)) for s in STAGES]),
                ("predictions", "counter", "Frames by their top label.",
                 [({"label": name}, n) for name, n in self.per_class.items()]),
                ("below_threshold", "counter", "Frames whose top probability is under the threshold.",
                 [({}, below)]),
                ("below_threshold_ratio", "gauge", "The share of frames under the threshold.",
                 [({}, round(below / frames, 6) if frames else 0.0)]),
                ("confidence_threshold", "gauge", "The threshold those two count against.",
                 [({}, self.threshold)]),
                ("collected", "counter", "Frames saved by --collect.", [({}, self.collected)]),
                ("reloads", "counter", "Models replaced while running (--reload).", [({}, self.reloads)]),
            ]
            stage_sums = [(s, self.stage_s[s]) for s in STAGES]
        lines = []
        for name, kind, help_text, samples in families:
            full = f"{PREFIX}_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
            suffix = "_total" if kind == "counter" else ""
            lines += [f"{full}{suffix}{_labels(**labels)} {value}" for labels, value in samples]
        full = f"{PREFIX}_stage_seconds"  # a summary without quantiles: the sum and count per stage
        lines += [f"# HELP {full} Time spent in each stage of the loop, in seconds.", f"# TYPE {full} summary"]
        for stage, total in stage_sums:
            lines += [f'{full}_sum{{stage="{stage}"}} {total:.6f}', f'{full}_count{{stage="{stage}"}} {frames}']
        lines += [f"# HELP {PREFIX}_model_info The model running.", f"# TYPE {PREFIX}_model_info gauge",
                  f"{PREFIX}_model_info{_labels(model=self.model)} 1"]
        return "\n".join(lines) + "\n"
