"""How `monitor run` (standalone or through the resident monitor) treats signals while CMD runs."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_stops(stop: Callable[[], object]) -> Iterator[None]:
    """SIGTERM calls `stop` (the sandbox dies, the summary is still written); SIGINT reaches CMD
    from the terminal too, and the monitor keeps draining. The handlers are restored after."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM:
            stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
