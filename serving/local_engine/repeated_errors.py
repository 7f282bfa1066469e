"""Errors that repeat are logged once per interval with a count; their tracebacks only at DEBUG.

A client that triggers the same server error in a loop would otherwise write a traceback per request
(tens of MB a second) into a log nobody rotates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RepeatedErrors:
    def __init__(self, logger: logging.Logger, *, interval: float = 60.0, max_kinds: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._max_kinds = max_kinds
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> [when it was last written, how many were held back since]
        self._kinds: OrderedDict[str, list[float]] = OrderedDict()

    def error(self, kind: str, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` unless ``kind`` was logged less than an interval ago; True when written."""
        now = self._clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is not None and now - entry[0] < self._interval:
                entry[1] += 1
                return False
            held_back = int(entry[1]) if entry is not None else 0
            self._kinds[kind] = [now, 0]
            self._kinds.move_to_end(kind)
            while len(self._kinds) > self._max_kinds:
                self._kinds.popitem(last=False)
        if held_back:
            message = f"{message} (repeated {held_back} more times since it was last logged)"
        self._log.error("%s", message)
        if exc is not None:
            self._log.debug("traceback of: %s", message, exc_info=exc)
        return True
