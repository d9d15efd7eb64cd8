"""Progress bars: a line at the start and at each tenth of the work in a log file; redrawn in place on a terminal."""
import io

from tinybridge.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_at_each_tenth():
    log = io.StringIO()
    bar = ProgressBar(200, "train", unit="img", stream=log)
    for n in range(1, 201):
        bar.update_to(n)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line.split("] ")[1].split()[0] for line in lines] == ["1/200"] + ["%d/200" % n for n in range(20, 201, 20)]


def test_a_terminal_redraws_one_line_and_blanks_a_shorter_one():
    term = Terminal()
    bar = ProgressBar(3, "train", unit="img", stream=term)
    bar.set_postfix_str("loss 0.693 acc 100%")
    bar.update_to(1)
    bar.set_postfix_str("")
    bar.update_to(3)
    bar.close()
    first, second = term.getvalue().split("\r")[1:]
    assert len(second.rstrip("\n")) == len(first)
    assert second.startswith("train [" + "#" * 30 + "] 3/3 img") and second.endswith("\n")


def test_a_slow_rate_keeps_its_digits():
    log = io.StringIO()
    bar = ProgressBar(100, "evaluate", unit="img", stream=log)
    bar._start -= 25.0  # 1 image in 25 s
    bar.update_to(1)
    assert "(0.04 img/s)" in log.getvalue()
