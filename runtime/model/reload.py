"""``ModelWatcher``: a model file watched while the camera runs (``cifar-run --reload``).

A thread of its own looks at the file every ``every_s`` seconds. Once the file has changed and
then stayed the same for one more look (a copy still being written is not loaded half-way),
it is loaded with every check a first load makes (the parity verdict, the self-check on this
machine), still on that thread, so the camera loop never waits for it. A model that passes
waits in ``take()``, which the loop calls between frames; one that fails is refused with its
reason, and the running model stays.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runtime.errors import CifarEdgeError, summary

if TYPE_CHECKING:
    from runtime.model.classifier import Classifier


def _signature(path: Path) -> tuple | None:
    """What changes when the file is replaced or rewritten; None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelWatcher:
    """Watch ``path``; ``load()`` builds a Classifier from it (raising when it is refused).
    ``on_refused(message)`` and ``log`` are told of each refusal, ``log`` of each reload."""

    def __init__(self, path: str | os.PathLike, load: Callable[[], "Classifier"], *, every_s: float = 1.0,
                 log: Callable[[str], None] = lambda _m: None,
                 on_refused: Callable[[str], None] = lambda _m: None):
        self.path, self.load, self.every_s, self.log, self.on_refused = Path(path), load, every_s, log, on_refused
        self._loaded = _signature(self.path)  # the version running now
        self._settling: tuple | None = None  # a new version seen once, loaded if it is still there next look
        self._ready: "Classifier | None" = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self.refused: str | None = None  # why the newest version was refused; None once one loads

    def start(self) -> "ModelWatcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.check()

    def check(self) -> None:
        """One look at the file (the thread's step; tests call it directly)."""
        now = _signature(self.path)
        if now == self._loaded or now is None:
            self._settling = None  # unchanged, or gone for the moment (a rename in progress)
            return
        if now != self._settling:
            self._settling = now  # changed since the last look: wait until it holds still
            return
        self._loaded, self._settling = now, None
        try:
            fresh = self.load()
        except Exception as exc:  # a corrupt file is onnxruntime's error as often as ours
            reason = str(exc) if isinstance(exc, CifarEdgeError) else summary(exc)
            self.refused = reason
            self.log(f"reload: {self.path} refused, the running model stays: {reason}")
            self.on_refused(reason)
            return
        with self._lock:
            self._ready = fresh
        self.refused = None
        self.log(f"reload: {self.path} passed its checks: {fresh.describe()}")

    def take(self) -> "Classifier | None":
        """The model that passed since the last call, or None (called between frames)."""
        with self._lock:
            fresh, self._ready = self._ready, None
        return fresh

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)  # a load under way finishes first
