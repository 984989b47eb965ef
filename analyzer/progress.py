"""Progress of long loads on stderr: a tqdm bar on a terminal, a plain line every 10% otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, what: str, unit: str = "MB", scale: float = 1e6):
        self.total, self.what, self.unit, self.scale = total, what, unit, scale
        self.done = 0
        self._next_pct = 10
        self._start = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # plain lines then
                pass
            else:
                self._bar = tqdm(total=total / scale, desc=what, unit=unit, file=sys.stderr, leave=False,
                                 bar_format="{desc}: {percentage:3.0f}% |{bar}| {n:.0f}/{total:.0f} {unit} "
                                            "[{elapsed}<{remaining}]")

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n / self.scale)
            return
        pct = 100 * self.done / self.total if self.total else 100
        if pct >= self._next_pct:
            self._next_pct = (int(pct) // 10 + 1) * 10
            print(f"{self.what}: {pct:.0f}% ({self.done / self.scale:.0f} of {self.total / self.scale:.0f} "
                  f"{self.unit}, {time.monotonic() - self._start:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
