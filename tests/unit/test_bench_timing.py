"""bench/'s view of a training from outside: when each epoch ended, and the time of the same run cut short."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.harness import Timed, run_timed


def test_each_results_row_is_timed_as_it_appears(tmp_path):
    # A stand-in training: writes YOLOv5's results.csv header, then a row every 0.3 s.
    script = ("import time, pathlib\n"
              "p = pathlib.Path('outputs/x/yolov5'); p.mkdir(parents=True)\n"
              "f = p / 'results.csv'; f.write_text('epoch, loss\\n')\n"
              "for e in range(3):\n"
              "    time.sleep(0.3)\n"
              "    with open(f, 'a') as out: out.write(f'{e}, 1.0\\n')\n"
              "time.sleep(0.3)\n")
    timed = run_timed([sys.executable, "-c", script], tmp_path / "run", {})
    assert len(timed.epoch_ends) == 3
    gaps = [b - a for a, b in zip([timed.started_at, *timed.epoch_ends], timed.epoch_ends)]
    assert all(0.2 < gap < 0.6 for gap in gaps[1:]), gaps
    assert 0.2 < timed.end_s < 0.6


def test_a_run_cut_short_keeps_its_start_and_its_end():
    timed = Timed(started_at=100.0, exited_at=130.0, epoch_ends=[110.0, 115.0, 120.0, 125.0], folder=Path("run"))
    assert timed.seconds == 30.0
    assert timed.end_s == 5.0
    assert timed.as_if(1) == 15.0  # 10 s to the first epoch's end, then the 5 s end
    assert timed.as_if(4) == timed.seconds
