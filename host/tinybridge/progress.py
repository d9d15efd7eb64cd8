"""Progress bars for long work, on stderr: redrawn in place on a terminal; written to a file or
pipe as a line at the start and at each tenth of the work, so logs stay readable."""
import sys
import time


class ProgressBar:
    """A bar with update_to(n), set_postfix_str(text) and close(), starting at `initial` done."""

    def __init__(self, total, desc, unit="B", initial=0, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._initial = initial
        self.postfix = ""
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._shown_at = 0.0
        self._shown_tenth = -1
        self._width = 0
        self._start = time.monotonic()

    def update_to(self, n):
        self.n = n
        now = time.monotonic()
        if self._tty:
            if now - self._shown_at >= 0.2 or n >= self.total:
                self._shown_at = now
                self._draw("\r", now)
        else:
            tenth = 10 * n // self.total if self.total else 10
            if tenth > self._shown_tenth:
                self._shown_tenth = tenth
                self._draw("", now, end="\n")

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, start, now, end=""):
        width = 30
        filled = width * self.n // self.total if self.total else width
        rate = (self.n - self._initial) / max(now - self._start, 1e-9)
        line = "%s [%s%s] %d/%d %s (%s %s/s) %s" % (
            self.desc, "#" * filled, "." * (width - filled), self.n, self.total, self.unit,
            "%.0f" % rate if rate >= 10 else "%.2g" % rate, self.unit, self.postfix)
        # a shorter line than the last one must blank the rest of it on a terminal
        self._stream.write(start + line.ljust(self._width) + end)
        self._stream.flush()
        self._width = len(line)

