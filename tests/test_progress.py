"""Progress lines for long work outside Keras: a redrawn line on a terminal, plain lines in logs."""

import io

from aaa_keras.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_gets_one_plain_line_per_tenth_and_no_control_codes():
    stream, clock = io.StringIO(), _Clock()
    with Progress("embedding", 1000, stream=stream, terminal=False, clock=clock) as progress:
        for _ in range(40):
            clock.now += 0.5
            progress.update(25)
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 10 and "\r" not in text and "\x1b" not in text
    assert lines[0] == "embedding 100/1000 (10%), 50/s, ETA 0:00:18"
    assert lines[-1] == "embedding 1000/1000 (100%), 50/s, ETA 0:00:00"


def test_a_terminal_gets_one_redrawn_line_ended_once():
    stream, clock = io.StringIO(), _Clock()
    progress = Progress("re-ranking queries", 4, stream=stream, terminal=True, clock=clock)
    for _ in range(4):
        clock.now += 1.0
        progress.update()
    progress.close()
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("4/4 (100%), 1/s, ETA 0:00:00\x1b[K\n")


def test_small_work_prints_nothing():
    stream = io.StringIO()
    with Progress("embedding", 10, stream=stream, terminal=False, min_total=33) as progress:
        progress.update(10)
    assert stream.getvalue() == ""
