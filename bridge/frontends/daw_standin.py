"""A stand-in for a DAW's audio thread, run as its own process by ``bench --beside-daw``.

Every block (256 frames at 48 kHz: 5.33 ms) it wakes at the block's start, does a fixed amount of
plain-Python work (calibrated to take 2 ms on an idle core) and must finish before the next block
starts. A block finished late, or never started because an earlier one overran, is a missed deadline:
the crackle a producer hears. It runs at the highest priority this user may take (real-time where
``RLIMIT_RTPRIO`` allows, else the lowest nice ``RLIMIT_NICE`` allows, else normal), as a DAW would.

Protocol on stdin/stdout (one JSON object a line): ``{"ready": ..., "iterations": N, "priority": ...}``
once started; the loop runs until stdin has a line (or closes); then ``{"blocks": ..., ...}``.
Standard library only: it must start fast and hold no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

BLOCK_FRAMES = 256
SAMPLE_RATE = 48000
WORK_MS = 2.0


def work(iterations: int) -> int:
    """The block's work: integer arithmetic in a Python loop (the GIL held, no memory traffic)."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) & 0xFFFF
    return x


def calibrate(work_ms: float, tries: int = 30) -> int:
    """Iterations of :func:`work` taking ``work_ms`` at the fastest this machine runs them now."""
    probe = 20000
    best = math.inf
    for _ in range(tries):
        started = time.perf_counter()
        work(probe)
        best = min(best, time.perf_counter() - started)
    return max(1, round(probe * work_ms / 1000.0 / best))


def take_highest_priority() -> str:
    """Real-time FIFO where this user may, else the lowest nice allowed, else none: says which."""
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)[0] if hasattr(resource, "RLIMIT_RTPRIO") else 0
    limit = "" if rtprio == resource.RLIM_INFINITY else f"RLIMIT_RTPRIO {rtprio}"
    if (rtprio == resource.RLIM_INFINITY or rtprio > 0) and hasattr(os, "sched_setscheduler"):
        level = 80 if rtprio == resource.RLIM_INFINITY else min(int(rtprio), 80)
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(level))
            return f"SCHED_FIFO {level} ({limit or 'no real-time limit'})"
        except OSError:
            pass
    nice_limit = resource.getrlimit(resource.RLIMIT_NICE)[0] if hasattr(resource, "RLIMIT_NICE") else 0
    lowest = 20 - int(nice_limit) if nice_limit not in (resource.RLIM_INFINITY,) else -20
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if lowest < current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, lowest)
            current = lowest
        except OSError:
            pass
    return f"nice {current} ({limit or 'RLIMIT_RTPRIO -'}, RLIMIT_NICE {nice_limit}: no real-time for this user)"


def run_blocks(iterations: int, period: float, stop: threading.Event,
               on_running: Callable[[], None] | None = None) -> dict[str, Any]:
    """The audio loop until ``stop``: lateness of every block against its deadline; ``on_running`` is
    called once the first block is done (the stand-in says ``ready`` then, so a stop counts a block)."""
    late_ms: list[float] = []
    missed = skipped = 0
    start = time.perf_counter() + 0.02
    block = 0
    while not stop.is_set():
        release = start + block * period
        now = time.perf_counter()
        if now < release:
            time.sleep(release - now)  # the driver's interrupt
        work(iterations)
        done = time.perf_counter()
        deadline = release + period
        late_ms.append((done - deadline) * 1000.0)
        block += 1
        if on_running is not None and len(late_ms) == 1:
            on_running()
        if done > deadline:
            missed += 1
            # the blocks whose deadline passed meanwhile are lost (a DAW outputs silence: an xrun)
            lost = int((done - start) // period) - block
            if lost > 0:
                skipped += lost
                block += lost
    blocks = len(late_ms) + skipped
    ordered = sorted(late_ms)
    return {
        "blocks": blocks, "missed": missed + skipped, "missed_percent": 100.0 * (missed + skipped) / max(1, blocks),
        "late_blocks": missed, "lost_blocks": skipped, "worst_lateness_ms": ordered[-1] if ordered else None,
        "p99_finish_ms": ordered[int(0.99 * (len(ordered) - 1))] + period * 1000.0 if ordered else None,
        "seconds": blocks * period,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a DAW audio thread's stand-in (bench --beside-daw)")
    parser.add_argument("--work-ms", type=float, default=WORK_MS)
    parser.add_argument("--iterations", type=int, default=0, help="work per block (0: calibrate to --work-ms)")
    parser.add_argument("--block-frames", type=int, default=BLOCK_FRAMES)
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE)
    args = parser.parse_args(argv)
    priority = take_highest_priority()
    iterations = args.iterations or calibrate(args.work_ms)
    period = args.block_frames / args.sample_rate
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, name="standin-stop", daemon=True).start()

    def say_ready() -> None:
        sys.stdout.write(json.dumps({"ready": True, "iterations": iterations, "priority": priority,
                                     "block_ms": period * 1000.0, "work_ms": args.work_ms}) + "\n")
        sys.stdout.flush()

    result = run_blocks(iterations, period, stop, on_running=say_ready)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
