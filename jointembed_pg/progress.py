"""Progress of long steps: a tqdm bar on a terminal, periodic log lines elsewhere.

One helper for every long step (bundle build, index, eval, sync, reembed). Where stderr
is a terminal the user sees a tqdm bar; where it is not (cron, ETL logs, CI) a one-line
report is written every :data:`LOG_INTERVAL_S` seconds (``$JOINTEMBED_PROGRESS_INTERVAL``
overrides it), e.g.::

    images: 640/1000 items (64%), 41.2 items/s, ETA 9 s

and, when at least one such line was written, a final ``... done`` line. Short runs (under
one interval) stay silent in log mode.

>>> with progress(len(items), "images", unit="item") as bar:
...     for batch in batches:
...         bar.update(len(batch))
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import IO, Iterator

from . import settings

#: Seconds between log lines when stderr is not a terminal.
LOG_INTERVAL_S = 10.0
INTERVAL_ENV = settings.PROGRESS_INTERVAL_ENV


def _interval() -> float:
    """``$JOINTEMBED_PROGRESS_INTERVAL`` (via :mod:`jointembed_pg.settings`), else :data:`LOG_INTERVAL_S`."""
    value = settings.get().progress_interval_s
    return LOG_INTERVAL_S if value is None else max(0.0, value)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _LogProgress:
    """tqdm's ``update``/``close`` interface, writing a line every ``interval`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: IO[str], interval: float):
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n = 0
        self._t0 = self._last = time.monotonic()
        self._lines = 0
        self._lock = threading.Lock()

    def line(self, now: float | None = None) -> str:
        """The progress line for the current count (items, rate, ETA)."""
        elapsed = max((now or time.monotonic()) - self._t0, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total is not None and rate > 0 and self.n < self.total:
            eta = f", ETA {_duration((self.total - self.n) / rate)}"
        return f"{self.desc}: {done} {self.unit}s{pct}, {rate:.1f} {self.unit}s/s, elapsed {_duration(elapsed)}{eta}"

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            now = time.monotonic()
            finished = self.total is not None and self.n >= self.total  # close() says "done"
            if now - self._last >= self.interval and not finished:
                self._last = now
                self._write(self.line(now))

    def _write(self, text: str) -> None:
        if self._lines >= 0:
            self._lines += 1
            _print(self.stream, text)

    def close(self) -> None:
        with self._lock:
            if self._lines:
                self._lines = 0
                self._write(f"{self.line()} -- done")
            self._lines = -1  # closed: no more lines

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None, desc: str, *, unit: str = "item", enabled: bool | None = True,
             stream: IO[str] | None = None, interval: float | None = None):
    """A progress reporter with tqdm's ``update(n)`` / ``close()`` (and ``with``).

    Args:
        total: number of units expected, or ``None`` when unknown (no percentage / ETA).
        desc: what is counted, e.g. ``"images"``.
        unit: singular unit name (``"item"``, ``"row"``).
        enabled: ``False`` reports nothing; ``True`` or ``None`` report (a bar when
            ``stream`` is a terminal, log lines otherwise).
        stream: where to write (default ``sys.stderr``, looked up at call time).
        interval: seconds between log lines (default ``$JOINTEMBED_PROGRESS_INTERVAL``
            or :data:`LOG_INTERVAL_S`).
    """
    if enabled is False:
        return _Off()
    stream = stream if stream is not None else sys.stderr
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return _LogProgress(total, desc, unit, stream, _interval() if interval is None else interval)


@contextmanager
def heartbeat(desc: str, *, enabled: bool | None = True, stream: IO[str] | None = None,
              interval: float | None = None) -> Iterator[None]:
    """Report the elapsed time of a step whose size is unknown (e.g. exporting a bundle).

    On a terminal a tqdm line shows the elapsed time; elsewhere ``desc: elapsed 40 s`` is
    written every ``interval`` seconds by a daemon thread, and ``desc: done in 52 s`` at
    the end if any line was written. The thread stops when the block exits.
    """
    if enabled is False:
        yield
        return
    stream = stream if stream is not None else sys.stderr
    t0, beats = time.monotonic(), [0]
    if _is_tty(stream):
        from tqdm.auto import tqdm

        bar = tqdm(total=None, desc=desc, file=stream, bar_format="{desc}: {elapsed}")
        every = 1.0

        def beat() -> None:
            bar.refresh()
    else:
        bar, every = None, (_interval() if interval is None else interval)

        def beat() -> None:
            beats[0] += 1
            _print(stream, f"{desc}: elapsed {_duration(time.monotonic() - t0)}")

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every or 0.05):
            beat()

    thread = threading.Thread(target=loop, name="jointembed-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.close()
        elif beats[0]:
            _print(stream, f"{desc}: done in {_duration(time.monotonic() - t0)}")


def _print(stream: IO[str], text: str) -> None:
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # a closed log must not stop the job
        pass
