"""Stop requests from SIGTERM or SIGUSR1 (a scheduler pre-empting the job) for the long
loops of sampling and evaluation: inside ``stop_on_signals()`` a signal only sets a flag,
which the loops check between chunks of work (``check``), so that they stop within one
chunk and the command keeps what it finished. Training is stopped by Lightning's own
SIGTERM handling (after the step in progress)."""

from __future__ import annotations

import contextlib
import signal

from scorelab.util.errors import Interrupted

_received: list[int] = []


def requested() -> int | None:
    """The signal that asked to stop, or None."""
    return _received[0] if _received else None


def check(what: str) -> None:
    """Raise ``Interrupted`` if a stop was requested (``what``: the work being stopped)."""
    if _received:
        raise Interrupted(f"stopped by signal {_received[0]} during {what}", _received[0])


@contextlib.contextmanager
def stop_on_signals():
    """Within the block SIGTERM and SIGUSR1 request a stop instead of killing the process
    (other handlers, e.g. Lightning's, are chained)."""
    _received.clear()
    names = [n for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n)]
    previous = {}

    def handler(signum, frame):
        if not _received:
            _received.append(signum)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)

    for name in names:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
