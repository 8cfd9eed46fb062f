"""Progress of long task work, for a terminal bar when flows run in the CLI's own process.

Tasks report; the ``vstar`` command listens while it runs a flow in-process. Under a worker nobody
listens and reporting costs a dictionary lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, int, int], None]  # (item label, steps done, steps in total)

_listeners: list[Listener] = []
_lock = threading.Lock()


def report(label: str, done: int, total: int) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(label, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
