"""Logging that a flood cannot turn into a flood of lines: the first of a kind now, then a count.

A client refused 300 times in a minute is two lines, not 300: the first refusal as it happens,
then at the end of the interval ``... (repeated 299 times in the last 60 s)``. Each *key* (what
the lines are about, e.g. ``("refused", host)``) has its own window of ``interval`` seconds.

- :class:`Throttle`: the bookkeeping alone, with an injectable clock (tests pass a fake one).
- :class:`ThrottledLog`: ``log(level, key, msg, *args)`` on a :class:`logging.Logger`; call
  :meth:`ThrottledLog.tick` now and then (the OSC loop wakes every 0.25 s) and
  :meth:`ThrottledLog.flush` at shutdown, so no count is lost.
- :class:`ThrottleFilter`: a :class:`logging.Filter` for loggers whose calls are not ours to
  change; it keys on the logger, the level and the message template (not its arguments), so
  ``"refusing TCP client %s"`` for 300 clients is throttled as one kind. Its count rides on the
  next line of that kind let through, or on :meth:`ThrottleFilter.flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]

DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_KEYS = 1024
_SUMMARY_MARK = "musicgen_throttle_summary"


@dataclass
class _Window:
    opened: float
    template: str
    args: tuple[Any, ...]
    level: int
    suppressed: int = 0


@dataclass(frozen=True)
class Summary:
    """Lines held back for one key: ``count`` like ``msg % args`` in the ``seconds`` since the first."""

    key: Hashable
    level: int
    msg: str
    args: tuple[Any, ...]
    count: int
    seconds: float

    def text(self) -> str:
        return f"{_format(self.msg, self.args)} (repeated {self.count} times in the last {self.seconds:.0f} s)"


def _format(msg: str, args: tuple[Any, ...]) -> str:
    try:
        return msg % args if args else msg
    except (TypeError, ValueError):
        return f"{msg} {args!r}"


class Throttle:
    """Per key: let the first occurrence through, count the rest until the key's interval ends.

    Thread-safe. At most ``max_keys`` keys are remembered; the oldest is summarised and forgotten
    to make room, so a flood of distinct keys cannot grow memory either.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, clock: Clock = time.monotonic,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if interval <= 0 or max_keys < 1:
            raise ValueError("a throttle needs an interval above 0 and room for at least one key")
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def hit(self, key: Hashable, level: int, msg: str, args: tuple[Any, ...] = ()) -> tuple[bool, list[Summary]]:
        """Count one occurrence; return (log it now?, summaries of windows that just ended)."""
        now = self.clock()
        with self._lock:
            due = self._expire(now)
            window = self._windows.get(key)
            if window is not None:
                window.suppressed += 1
                return False, due
            while len(self._windows) >= self.max_keys:
                old_key, old = self._windows.popitem(last=False)
                if old.suppressed:
                    due.append(self._summary(old_key, old, now))
            self._windows[key] = _Window(opened=now, template=msg, args=args, level=level)
            return True, due

    def expire(self) -> list[Summary]:
        """Close the windows whose interval has passed; return the summaries of those that held lines back."""
        now = self.clock()
        with self._lock:
            return self._expire(now)

    def drain(self) -> list[Summary]:
        """Close every window now (at shutdown); return the summaries of those that held lines back."""
        now = self.clock()
        with self._lock:
            out = [self._summary(key, w, now) for key, w in self._windows.items() if w.suppressed]
            self._windows.clear()
            return out

    def _expire(self, now: float) -> list[Summary]:
        due: list[Summary] = []
        for key in [k for k, w in self._windows.items() if now - w.opened >= self.interval]:
            window = self._windows.pop(key)
            if window.suppressed:
                due.append(self._summary(key, window, now))
        return due

    @staticmethod
    def _summary(key: Hashable, window: _Window, now: float) -> Summary:
        return Summary(key=key, level=window.level, msg=window.template, args=window.args,
                       count=window.suppressed, seconds=max(0.0, now - window.opened))


class ThrottledLog:
    """A logger's ``log`` with a key: repeated lines of one key become one count per interval."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL, *,
                 clock: Clock = time.monotonic, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.logger = logger
        self.throttle = Throttle(interval, clock=clock, max_keys=max_keys)

    def log(self, level: int, key: Hashable, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval; True when it was written now.

        ``exc_info``: add the traceback of the exception being handled (to the line written, not the count).
        """
        now, due = self.throttle.hit(key, level, msg, args)
        self._emit(due)
        if now:
            self.logger.log(level, msg, *args, exc_info=exc_info)
        return now

    def warning(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def tick(self) -> int:
        """Write the counts of windows that ended; return how many lines that was."""
        due = self.throttle.expire()
        self._emit(due)
        return len(due)

    def flush(self) -> int:
        """Write every pending count now (at shutdown); return how many lines that was."""
        due = self.throttle.drain()
        self._emit(due)
        return len(due)

    def _emit(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            self.logger.log(summary.level, "%s", summary.text())


class ThrottleFilter(logging.Filter):
    """Attach to a logger (``logger.addFilter``) to throttle its repeated lines by message template.

    The first line of a kind passes; the next ones within ``interval`` are dropped and counted; the
    first one after the interval passes with ``(and N more like it in the last T s)`` added.
    ``flush()`` writes the counts still held (at shutdown) to ``logger``.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, clock: Clock = time.monotonic,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__()
        self.throttle = Throttle(interval, clock=clock, max_keys=max_keys)
        self._held: dict[Hashable, Summary] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY_MARK, False):
            return True  # our own count line from flush()
        key = (record.name, record.levelno, str(record.msg))
        args = record.args if isinstance(record.args, tuple) else ()
        now, due = self.throttle.hit(key, record.levelno, str(record.msg), args)
        with self._lock:
            for summary in due:
                self._held[summary.key] = summary
            if not now:
                return False
            held = self._held.pop(key, None)
        if held is not None:
            record.msg = f"{record.getMessage()} (and {held.count} more like it in the last {held.seconds:.0f} s)"
            record.args = None
        return True

    def flush(self, logger: logging.Logger) -> int:
        """Log the counts still held back, one line each; return how many lines that was."""
        with self._lock:
            held = list(self._held.values()) + self.throttle.drain()
            self._held.clear()
        for summary in held:
            logger.handle(logger.makeRecord(logger.name, summary.level, "(throttled)", 0, "%s",
                                            (summary.text(),), None, extra={_SUMMARY_MARK: True}))
        return len(held)
