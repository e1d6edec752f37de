"""Job memory: what a job's cost estimate says it holds at its peak, beside what it really held.

Not a CI test. Loads ``--model`` (``small-arch-random``: the real architecture, random weights) at
``--precision`` in a fresh process for each ``--variations`` count (memory a job freed stays with the
allocator, so jobs in one process would hide each other's peaks), warms it with a 1 s job, then runs
one text job of ``--seconds`` through the bridge (``Bridge.run``: generation, decoding, post-processing, the files written) while a thread reads
this process's resident memory (``/proc/self/statm``) every 2 ms. It reports, per job, the estimate
(``bridge.app.budget.job_cost``, stage by stage, the decoder's key/value cache among them) and the
measured peak over the resident memory just before the job: the estimate is meant to be at or above
what is held, and the cache the largest share on the CPU.

    python benchmarks/job_memory.py --model small-arch-random --precision fp32 --seconds 10 \\
        --variations 1 4 --json benchmarks/results/<machine>-job-memory-small-arch-random.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The highest resident memory seen while running, read every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_one(model: str, precision: str, seconds: float, count: int) -> dict[str, Any]:
    from bridge.app import planning
    from bridge.app.bridge import Bridge
    from bridge.app.budget import job_cost
    from bridge.config import Config
    from bridge.engine import Engine
    from bridge.engine.models import load_model

    engine = Engine(load_model(model, precision=precision))
    out = Path(tempfile.mkdtemp(prefix="mgb-memory-"))
    bridge = Bridge(engine, Config(model=model, output_dir=out))
    warm = bridge.make_request("text", "warm up", 1.0, None, {})
    bridge.run("warm", warm, lambda _p: None, lambda: False)  # first-call allocations out of the way
    request = bridge.make_request("text", "dusty lofi keys", seconds, None, {"variations": count})
    plan = planning.plan(request, None, engine)
    cost = job_cost(request, plan, None, engine, engine.text_tokens(plan.text, request.negative))
    gc.collect()
    before = _rss()
    started = time.monotonic()
    with PeakSampler() as sampler:
        bridge.run(f"v{count}", request, lambda _p: None, lambda: False)
    held = sampler.peak - before
    return {"variations": count, "estimate_bytes": cost.peak_bytes, "stages": cost.stages,
            "measured_peak_over_start_bytes": held, "rss_before_bytes": before,
            "estimate_over_measured": cost.peak_bytes / held if held > 0 else None,
            "seconds": time.monotonic() - started, "precision": engine.loaded.precision,
            "cache_dtype": str(engine.loop.fast.compute_dtype) if engine.loop.fast is not None else None}


def measure(model: str, precision: str, seconds: float, variations: list[int]) -> dict[str, Any]:
    """Each count in its own process (this script with ``--one``)."""
    jobs = []
    for count in variations:
        done = subprocess.run([sys.executable, __file__, "--model", model, "--precision", precision, "--seconds",
                               str(seconds), "--one", str(count)], capture_output=True, text=True, check=True)
        jobs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"model": model, "precision": jobs[0]["precision"], "cache_dtype": jobs[0]["cache_dtype"],
            "seconds": seconds, "machine": machine(), "jobs": jobs}


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['model']} at {report['precision']} (cache {report['cache_dtype']}), {report['seconds']:g} s, "
             f"on {report['machine']}", "",
             "| variations | estimate, peak | of which the decoder cache | measured peak over the start | estimate / measured |",
             "|---|---|---|---|---|"]
    for row in report["jobs"]:
        ratio = row["estimate_over_measured"]
        lines.append(f"| {row['variations']} | {row['estimate_bytes'] / MB:.0f} MB | "
                     f"{row['stages'].get('tokens', 0) / MB:.0f} MB | {row['measured_peak_over_start_bytes'] / MB:.0f} MB | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small-arch-random")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child: one job, JSON out
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.model, args.precision, args.seconds, args.one)))
        return 0
    report = measure(args.model, args.precision, args.seconds, args.variations)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
