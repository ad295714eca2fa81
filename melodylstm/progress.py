"""Training progress shown to suit where it goes: a live bar on a terminal; in a log (stderr is not
a terminal) one line per 30 seconds between the validation lines, so a long run logs kilobytes."""
from __future__ import annotations

import sys
import time

LOG_INTERVAL = 30.0  # seconds between progress lines in a log


class TrainingProgress:
    """Told each step's progress and, now and then, the loss and speed; shows them as a bar that
    redraws at most once a second, or as a line when `interval` seconds passed without one."""

    def __init__(self, enabled: bool, log, start: float = 0.0, stream=None, clock=time.monotonic,
                 interval: float = LOG_INTERVAL):
        stream = stream if stream is not None else sys.stderr
        self.log, self.clock, self.interval = log, clock, interval
        self.loss = self.rate = None
        self.bar, self.lines = None, False
        if enabled and _is_terminal(stream):
            from tqdm import tqdm

            self.bar = tqdm(total=1000, initial=round(1000 * start), file=stream, unit="‰", dynamic_ncols=True,
                            leave=False, mininterval=1.0, bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
        else:
            self.lines = enabled
        self.last_line = clock()

    def measured(self, loss: float, rate: float) -> None:
        self.loss, self.rate = loss, rate
        if self.bar is not None:  # shown with the next redraw, not one more of its own
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False)

    def update(self, step: int, progress: float, elapsed: float) -> None:
        if self.bar is not None:
            permille = round(1000 * progress)
            if permille != self.bar.n:
                self.bar.update(permille - self.bar.n)
        elif self.lines and self.clock() - self.last_line >= self.interval:
            self.log(progress_line(step, progress, elapsed, self.loss, self.rate))
            self.last_line = self.clock()

    def validated(self) -> None:
        """A validation line just went out: the next progress line is due `interval` from now."""
        self.last_line = self.clock()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_line(step: int, progress: float, elapsed: float, loss=None, rate=None) -> str:
    left = f", about {elapsed * (1 - progress) / progress / 60:.1f} min left" if progress > 0 else ""
    measured = f": loss {loss:.3f}, {rate:,.0f} tokens/s" if loss is not None else ""
    return f"step {step:,} ({progress:.0%} of the budget, {elapsed / 60:.1f} min{left}){measured}"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
