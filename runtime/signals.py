"""Signals as events: Ctrl+C and SIGTERM end a long-running loop in order."""

from __future__ import annotations

import signal
import threading


class SignalStop:
    """Between ``install()`` and ``restore()``, SIGINT and SIGTERM set ``event`` instead of
    raising, so that a long-running command (the camera loop, a server) ends its work in order
    and finishes what it writes; ``name`` says which signal came (None: none did)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: list[int] = []
        self._previous: dict = {}

    def install(self) -> "SignalStop":
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _on_signal(self, signum, _frame) -> None:
        self.received.append(signum)
        self.event.set()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None
