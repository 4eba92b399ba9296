"""Progress of long loops, for people at a terminal and in ``log.txt``; the machine's load for
timings (:func:`load_line`).

:class:`Progress` is a tqdm bar (stderr) that also logs the rate and the remaining time through
Detectron2's ``log_every_n_seconds``, so that a run's ``log.txt`` says how far CAM inference, CRF,
SAM labelling, label writing or COCO mask painting got, and when it will end.
"""

from __future__ import annotations

import datetime
import logging
import os
import time

from detectron2.utils.logger import log_every_n_seconds
from tqdm import tqdm

__all__ = ["Progress", "load_line"]


def load_line(when: str = "") -> str:
    """``"load average <when>: 1-min 5-min 15-min"``. Before a timing (``when`` other than
    "after") a 1-minute load above 1 adds a warning: other jobs share the machine, the timings
    are not an idle machine's. After it the load includes the benchmark's own processes (a
    2-core benchmark brings it near 2 by itself), so it is reported without a warning."""
    load = os.getloadavg()
    line = f"load average{' ' + when if when else ''}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    if when == "after":
        line += " (with this benchmark's own load)"
    elif load[0] > 1:
        line += "  WARNING: load above 1, other jobs inflate these timings"
    return line


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class Progress:
    """``with Progress(total, "CAM inference", unit="img") as p: ... p.update(n)``.

    Args:
        total: items the loop will process.
        desc: what the loop does (first words of the log lines and the bar).
        enabled: False: no bar, no log lines (non-main ranks).
        period: seconds between two log lines (Detectron2's ``log_every_n_seconds``).
        logger_name: logger of the lines (default ``wsss_d2``, which writes to log.txt).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        unit: str = "img",
        period: float = 10.0,
        logger_name: str = "wsss_d2",
    ):
        self.total, self.desc, self.enabled, self.unit = int(total), desc, enabled, unit
        self.period, self.logger_name = period, logger_name
        self.done = 0
        self.closed = False
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)

    def line(self) -> str:
        """``"<desc>: 12/80 img (15%), 3.41 img/s, ETA 0:00:20"``."""
        dt = time.perf_counter() - self.start
        rate = self.done / dt if dt > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / max(self.total, 1)
        eta = _eta(left) if left == left else "?"
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.2f} {self.unit}/s, ETA {eta}"
        )

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; the last one closes the bar (and logs the summary line)."""
        self.done += n
        self.bar.update(n)
        if self.done >= self.total:
            self.close()
        elif self.enabled:
            log_every_n_seconds(logging.INFO, self.line(), n=self.period, name=self.logger_name)

    def close(self) -> None:
        """Close the bar and log the totals (once)."""
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.enabled and self.total:
            dt = time.perf_counter() - self.start
            logging.getLogger(self.logger_name).info(
                "%s: %d %s in %.1f s (%.2f %s/s)",
                self.desc,
                self.done,
                self.unit,
                dt,
                self.done / max(dt, 1e-9),
                self.unit,
            )

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
