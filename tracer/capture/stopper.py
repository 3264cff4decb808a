"""How a capture is told to end: SIGINT (Ctrl-C), SIGTERM or SIGHUP."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Stopper:
    """Ends the capture on SIGINT, SIGTERM or SIGHUP (the handlers are restored after)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
