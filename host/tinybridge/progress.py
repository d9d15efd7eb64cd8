"""Progress bars for long work: tqdm when it is installed, else a plain one-line bar on stderr."""
import sys
import time


class _PlainBar:
    def __init__(self, total, desc, unit, initial):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._initial = initial
        self.postfix = ""
        self._shown = 0.0
        self._start = time.monotonic()

    def update_to(self, n):
        self.n = n
        now = time.monotonic()
        if now - self._shown >= 0.2 or n >= self.total:
            self._shown = now
            width = 30
            filled = width * n // self.total if self.total else width
            rate = (n - self._initial) / max(now - self._start, 1e-9)
            sys.stderr.write("\r%s [%s%s] %d/%d %s (%.0f %s/s) %s" % (
                self.desc, "#" * filled, "." * (width - filled), n, self.total, self.unit, rate, self.unit,
                self.postfix))
            sys.stderr.flush()

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        sys.stderr.write("\n")


class _TqdmBar:
    def __init__(self, total, desc, unit, initial):
        import tqdm

        scale = unit == "B"
        self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                              initial=initial)

    def update_to(self, n):
        self._bar.update(n - self._bar.n)

    def set_postfix_str(self, text):
        self._bar.set_postfix_str(text)

    def close(self):
        self._bar.close()


def progress_bar(total, desc, unit="B", initial=0):
    """A bar with update_to(n), set_postfix_str(text) and close(), starting at `initial` done."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return _PlainBar(total, desc, unit, initial)
    return _TqdmBar(total, desc, unit, initial)
