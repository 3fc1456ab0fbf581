"""``run_camera``: the live command (``cifar-run --camera SRC``): frames from a source through
the classify loop, then shown, printed, saved and served, stopped in order on any signal."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from runtime.camera import outputs
from runtime.camera.loop import classify_stream
from runtime.camera.metrics import LiveMetrics
from runtime.camera.sources import open_source
from runtime.errors import ExitCode
from runtime.signals import SignalStop

if TYPE_CHECKING:
    from runtime.image.collect import CollectOptions
    from runtime.model.classifier import Classifier
    from runtime.web import ServeConfig


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CameraOptions:
    """How the live loop runs (``cifar-run --camera``), each default the CLI's."""

    save: Path | None = None  # annotated video to write (atomically, finished on any stop)
    headless: bool = False  # no window: print a line per frame instead
    fmt: str = "table"  # headless lines: "table" or "json"
    full_frame: bool = False  # classify the whole frame, not its centre square
    smooth: int = 1  # average probabilities over this many recent frames
    min_confidence: float = 0.0  # below it the label is shown as uncertain
    reconnect: int = 3  # reopen a live source that stops delivering this many times
    max_frames: int | None = None  # stop after this many frames
    duration: float | None = None  # stop after this many seconds
    realtime: bool = False  # play a video file at its own frame rate
    size: tuple[int, int] | None = None  # picam / csi:// frame size (W, H)
    fps: int | None = None  # picam / csi:// frame rate
    every: float = 0.0  # headless: at most one line every this many seconds (0: every frame)
    serve: "ServeConfig | None" = None  # also serve the stream, the prediction and uploads
    collect: "CollectOptions | None" = None  # save the frames the model is unsure of (--collect DIR)
    reload: "Callable[[], Classifier] | None" = None  # --reload: loads the model file again, checks included
    reload_every_s: float = 1.0  # s: how often the model file is looked at


def run_camera(clf, spec: str, options: CameraOptions = CameraOptions(),
               log: Callable[[str], None] = _stderr) -> int:
    """The live loop: classify, overlay, show or print, save, serve, collect. Stops cleanly on
    q/Esc, Ctrl+C or SIGTERM, always releasing the camera and finishing the saved video.
    Returns the exit code; ``log`` gets the progress lines (stderr by default)."""
    o = options
    signals = SignalStop().install()
    stop = signals.event  # set by Ctrl+C, SIGTERM or the q key
    source, sinks, watcher = None, _Sinks(o, spec, stop, log), None
    try:
        source = open_source(spec, size=o.size, fps=o.fps)
        log(clf.describe())  # after the source opened: a failure to open stays one line
        sinks.open(clf, source)
        if o.reload is not None:
            from runtime.model.reload import ModelWatcher

            watcher = ModelWatcher(clf.model_path, sinks.loading(o.reload), every_s=o.reload_every_s, log=log,
                                   on_refused=sinks.refused).start()
            log(f"watching {clf.model_path}: a new file that passes its checks replaces the model")
        log(f"reading {'live source' if source.live else 'video file'} {spec}")
        frames = 0
        for result in classify_stream(
                source, clf, full_frame=o.full_frame, smooth=o.smooth, min_confidence=o.min_confidence,
                reconnect=o.reconnect, max_frames=o.max_frames, duration_s=o.duration,
                pace_fps=(getattr(source, "fps", None) or 30.0) if o.realtime and not source.live else None,
                stop=stop, swap=None if watcher is None else lambda: sinks.swapped(watcher.take())):
            frames += 1
            sinks.handle(result)
        log(f"{frames} frame(s) classified")
    finally:
        signals.restore()
        if watcher is not None:
            watcher.close()
        sinks.close(source)
    if signals.name:
        log(f"stopped by {signals.name}")
        return ExitCode.INTERRUPTED
    return ExitCode.OK


class _Sinks:
    """Where each FrameResult goes: the web server, the collector, the saved video, the window
    or the printed line. Opened once the source is; closed in order, whatever was opened."""

    def __init__(self, o: CameraOptions, spec: str, stop, log: Callable[[str], None]):
        self.o, self.spec, self.stop, self.log = o, spec, stop, log
        self.saver = self.window = self.server = self.collector = None
        self.metrics: LiveMetrics | None = None
        self.last_printed = float("-inf")
        self.file_ids: dict = {}  # a reloaded Classifier -> its file's id, hashed on the watcher's thread

    def open(self, clf, source) -> None:
        o = self.o
        # "Unsure" in the counters: what --collect keeps, else what is shown as uncertain.
        self.metrics = LiveMetrics(clf.class_names, o.collect.below if o.collect else o.min_confidence,
                                   clf.model_path.name)
        if o.collect is not None:
            from runtime.image.collect import Collector, model_file_id

            self.collector = Collector(o.collect, model=clf.model_path.name, exclusive=True,
                                       model_sha256=model_file_id(clf.model_path))
        if o.save is not None:
            self.saver = outputs.VideoSaver(o.save, fps=getattr(source, "fps", None) or 30.0)
        if o.serve is not None:
            from runtime.web import WebServer

            self.server = WebServer(clf, o.serve, live=True, log=self.log, metrics=self.metrics,
                                    collector=self.collector).start()
        self.window = None if o.headless else outputs.Window.try_open(f"cifar-run {self.spec}")
        if self.window is None and not o.headless:
            self.log("no display: running headless")

    def loading(self, load):
        """``load`` (--reload's), also hashing the new file when collecting: on the watcher's
        thread, so that the swap between two frames does no file reading."""
        if self.collector is None:
            return load

        def load_and_hash():
            from runtime.image.collect import model_file_id

            fresh = load()
            self.file_ids[fresh] = model_file_id(fresh.model_path)
            return fresh

        return load_and_hash

    def swapped(self, fresh):
        """A reloaded model, between frames: counted, served; handed back to the loop."""
        if fresh is not None:
            self.metrics.reloaded(fresh.model_path.name)
            if self.collector is not None:  # the frames it keeps from now on name the new version
                self.collector.model, self.collector.model_sha256 = fresh.model_path.name, self.file_ids.pop(fresh, None)
            if self.server is not None:
                self.server.use(fresh)
        return fresh

    def refused(self, reason: str) -> None:
        if self.server is not None:
            self.server.refused(reason)

    def handle(self, result) -> None:
        self.metrics.observe(result, collected=self._collect(result))
        if self.server is not None:
            self.server.publish(result)  # never waits on the viewers
        if self.saver is not None or self.window is not None:  # printing alone needs no OpenCV
            annotated = outputs.annotate_frame(result.frame_bgr, result)
        if self.saver is not None:
            self.saver.write(annotated)
        if self.window is not None:
            _show(self.window, annotated, result, self.stop, self.log)
        elif time.monotonic() - self.last_printed >= self.o.every:
            self.last_printed = time.monotonic()
            _print_frame(result, self.o.fmt, self.metrics)

    def _collect(self, result) -> bool:
        """Offer the frame to --collect: whether it was saved."""
        if self.collector is None:
            return False
        try:
            return self.collector.offer(result.prediction, frame_bgr=result.frame_bgr, source=self.spec,
                                        frame=result.index) is not None
        except OSError as exc:  # a full or failing disk stops the collecting, not the camera
            self.log(f"collect: {exc}; no longer collecting")
            self.collector = None
            return False

    def close(self, source) -> None:
        if self.server is not None:
            self.server.close()
        if self.collector is not None:
            self.log(self.collector.summary())
            self.collector.close()  # after the server: the labelling page writes through it
        if self.window is not None:
            self.window.close()
        if source is not None:
            source.release()
        if self.saver is not None:
            written = self.saver.close()
            if written:
                self.log(f"wrote {written} ({self.saver.frames} frames)")


def _print_frame(result, fmt: str, metrics: LiveMetrics) -> None:
    if fmt == "json":
        click.echo(json.dumps({**result.to_dict(), "read_ms": round(result.read_ms, 3),
                               "totals": metrics.totals()}))
    else:
        click.echo(f"frame {result.index:>6}  {result.label:<12} {result.prediction.confidence:>6.1%}  "
                   f"{result.classify_ms:6.1f} ms  {result.fps:5.1f} fps")


def _show(window, annotated, result, stop, log) -> None:
    """Show a frame; keys: q/Esc stop, space pauses (until pressed again), s saves a snapshot."""
    key = window.show(annotated)
    paused = False
    while True:
        if key in (ord("q"), 27):
            stop.set()
        elif key == ord(" "):
            paused = not paused
        elif key == ord("s"):
            shot = outputs.save_snapshot(annotated, f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-{result.index}.png")
            log(f"saved {shot}")
        if not paused or stop.is_set():
            return
        key = window.wait_key(50)
