"""bench --beside-daw: the DAW stand-in's bookkeeping, its process protocol, the table, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from bridge.frontends import beside_daw, daw_standin
from bridge.frontends.cli import main


def test_blocks_that_cannot_make_their_deadline_are_counted_late_and_the_ones_skipped_lost():
    class AfterFiveBlocks(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.asked = 0

        def is_set(self) -> bool:
            self.asked += 1
            return self.asked > 5

    # 0.1 ms blocks with far more work than that: every block is late and the loop skips ahead
    result = daw_standin.run_blocks(iterations=20000, period=0.0001, stop=AfterFiveBlocks())
    assert result["late_blocks"] == 5 and result["lost_blocks"] >= 1
    assert result["missed"] == result["late_blocks"] + result["lost_blocks"] == result["blocks"]
    assert result["missed_percent"] == 100.0
    assert result["worst_lateness_ms"] > 0


def test_the_stand_in_process_says_ready_then_reports_its_blocks_when_told_to_stop():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-m", "bridge.frontends.daw_standin", "--iterations", "100"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdin is not None
    ready = json.loads(child.stdout.readline())
    assert ready["ready"] is True and ready["iterations"] == 100
    assert abs(ready["block_ms"] - 256 / 48) < 1e-9 and ready["work_ms"] == 2.0
    assert ready["priority"].startswith(("nice", "SCHED_FIFO"))
    child.stdin.write("stop\n")
    child.stdin.flush()
    result = json.loads(child.stdout.readline())
    assert child.wait(timeout=30) == 0
    assert result["blocks"] >= 1 and 0 <= result["missed"] <= result["blocks"]
    assert result["missed_percent"] == 100.0 * result["missed"] / result["blocks"]


def test_the_table_shows_each_setting_alone_and_beside():
    settings = {
        name: {"compute": compute, "realtime_factor_alone": alone, "realtime_factor_beside": beside,
               "beside_over_alone": beside / alone,
               "standin_beside": {"missed_percent": missed, "worst_lateness_ms": late}}
        for name, compute, alone, beside, missed, late in (("old", "2 threads", 0.88, 0.63, 3.86, 5.5),
                                                         ("new", "1 thread, SCHED_IDLE", 0.63, 0.59, 1.16, 3.4))}
    result = {"standin": {"block_ms": 5.333, "work_ms": 2.0, "priority": "nice 0",
                          "alone": {"missed_percent": 0.37, "worst_lateness_ms": 2.3}},
              "model": "small-arch-random", "audio_seconds": 5.0, "runs": 2, "settings": settings}
    table = beside_daw.format_table(result)
    assert "| stand-in alone | 0.37% | 2.3 ms | | |" in table
    assert "| old defaults (2 threads), beside | 3.86% | 5.5 ms | 0.63x | 0.72 |" in table
    assert "| new defaults (1 thread, SCHED_IDLE), bridge alone | | | 0.63x | |" in table
    assert "| new defaults (1 thread, SCHED_IDLE), beside | 1.16% | 3.4 ms | 0.59x | 0.94 |" in table


def test_bad_threads_are_refused_before_anything_starts(capsys):
    assert main(["bench", "--beside-daw", "--threads", "0"]) == 2
    assert "threads must be 1 or more" in capsys.readouterr().err
