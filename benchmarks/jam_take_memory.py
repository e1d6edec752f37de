"""A long jam's memory: what the jam runner holds as its take grows.

Not a CI test. Runs ``bridge.app.jam.run_jam`` files-only (no device) over a stand-in jam that hands
out ready segments of noise at once (``--seconds-per-segment`` at ``--rate`` Hz, ``--channels``), so
the runner, the segment files and the take are real and the model is left out: its memory does not
grow with the jam. A thread reads this process's resident memory every 2 ms; the report is the peak
over the resident memory just before the jam, for each ``--minutes`` of audio, in a fresh process each
(memory freed stays with the allocator).

    python benchmarks/jam_take_memory.py --minutes 5 20 --json benchmarks/results/<machine>-jam-take-memory.json

Run it at two commits to compare (the numbers are this code's; the JSON names the commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_memory import MB, PeakSampler, _rss, machine


class _Engine:
    def __init__(self, rate: int, channels: int) -> None:
        self.sample_rate = rate
        self.channels = channels


class _ReadyJam:
    """The jam's interface to its runner, with segments ready at once (no model)."""

    def __init__(self, rate: int, channels: int, seconds: float) -> None:
        from bridge.engine.jam import JamSettings

        self.engine = _Engine(rate, channels)
        self.settings = JamSettings(prompt="bench", bpm=120.0, bars=1)
        self._samples = round(seconds * rate)
        self._index = 0
        self._noise = np.random.default_rng(0).uniform(-0.5, 0.5, (channels, self._samples)).astype(np.float32)

    def next_segment(self, is_cancelled: Any = None) -> Any:
        from bridge.engine.jam import Segment

        segment = Segment(index=self._index, start_sample=self._index * self._samples, audio=self._noise.copy(),
                          settings=self.settings, generation_seconds=0.001)
        self._index += 1
        return segment


def one(minutes: float, rate: int, channels: int, segment_seconds: float) -> dict[str, Any]:
    from bridge.app.jam import run_jam

    jam = _ReadyJam(rate, channels, segment_seconds)
    with tempfile.TemporaryDirectory() as folder:
        before = _rss()
        with PeakSampler() as sampler:
            began = time.perf_counter()
            take = run_jam(jam, Path(folder) / "jam", should_stop=lambda: False,  # type: ignore[arg-type]
                           for_seconds=minutes * 60.0)
            took = time.perf_counter() - began
        peak = sampler.peak
        take_bytes = (Path(folder) / "jam" / "take.wav").stat().st_size
    return {"minutes": minutes, "take_seconds": take.seconds, "take_file_mb": round(take_bytes / MB, 1),
            "peak_over_before_mb": round((peak - before) / MB, 1), "seconds": round(took, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--rate", type=int, default=32000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--seconds-per-segment", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child, args.rate, args.channels, args.seconds_per_segment)))
        return
    rows = []
    for minutes in args.minutes:
        out = subprocess.run([sys.executable, __file__, "--child", str(minutes), "--rate", str(args.rate),
                              "--channels", str(args.channels), "--seconds-per-segment",
                              str(args.seconds_per_segment)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).parent).stdout.strip()
    report = {"benchmark": "jam_take_memory", "commit": commit, "machine": machine(),
              "rate": args.rate, "channels": args.channels, "segment_seconds": args.seconds_per_segment, "rows": rows}
    print(f"| audio (min) | take file (MB) | peak over before (MB) | run (s) |   commit {commit}")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['minutes']:g} | {row['take_file_mb']} | {row['peak_over_before_mb']} | {row['seconds']} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
