"""The driver's progress line (images done / failed, images per minute, ETA) on stderr."""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress", "fmt_secs"]


class Progress:
    """Images done / failed, images per minute, ETA; on stderr."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.ok = self.failed = 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, ok: int, failed: int) -> None:
        self.ok += ok
        self.failed += failed
        now = time.perf_counter()
        if not self.enabled:
            return
        done = self.ok + self.failed
        if done < self.total and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        el = max(1e-9, now - self.t0)
        rate = done / el * 60.0
        eta = (self.total - done) / (done / el) if done else float("nan")
        eta_s = "--" if not math.isfinite(eta) else fmt_secs(eta)
        line = (
            f"[pulse-ray] {done}/{self.total} done (ok {self.ok}, failed {self.failed}) | "
            f"{rate:.1f} img/min | ETA {eta_s}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def fmt_secs(s: float) -> str:
    if 0 < s < 10 and s != int(s):
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
