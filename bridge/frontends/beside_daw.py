"""``bench --beside-daw``: does the bridge leave a DAW its deadlines, and how fast is it beside one?

Three processes: this one only directs. The DAW stand-in (:mod:`bridge.frontends.daw_standin`) runs
alone first; then, for each compute setting compared (the old defaults: torch's thread count, normal
priority, OpenMP spinning; and the bridge's own plan, :mod:`bridge.compute`), a bridge process loads
the model, times its generation alone, then again while the stand-in runs beside it. Reported: the
stand-in's missed deadlines (%) and worst lateness, and the bridge's real-time factor alone and beside.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bridge.compute import PASSIVE_WAIT

TARGET_MISSED_PERCENT = 1.0
TARGET_KEPT_SPEED = 0.7
STANDIN_ALONE_SECONDS = 10.0
PROMPT = "lo-fi hip hop with dusty keys, warm bass and a lazy swing beat"  # bench's own


def _env(passive: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PASSIVE_WAIT}
    if passive:
        env.update(PASSIVE_WAIT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    os.environ.get("PYTHONPATH", "")) if p)
    return env


def _read_json(stream: IO[str], what: str) -> dict[str, Any]:
    """The next JSON object line of a child's stdout (other lines are passed to stderr)."""
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"the {what} ended without answering (see its messages above)")
        line = line.strip()
        if line.startswith("{"):
            return dict(json.loads(line))
        sys.stderr.write(f"[{what}] {line}\n")


def _pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    if process.stdin is None or process.stdout is None:
        raise RuntimeError("a child process was started without its pipes")
    return process.stdin, process.stdout


class StandIn:
    """The DAW stand-in process, started and stopped around a phase."""

    def __init__(self, iterations: int = 0) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bridge.frontends.daw_standin",
                                         "--iterations", str(iterations)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=_env(False))
        self.stdin, self.stdout = _pipes(self.process)
        self.ready = _read_json(self.stdout, "DAW stand-in")

    def stop(self) -> dict[str, Any]:
        self.stdin.write("stop\n")
        self.stdin.flush()
        result = _read_json(self.stdout, "DAW stand-in")
        self.process.wait(timeout=30)
        return result


class BridgeProcess:
    """A bridge process with one compute setting: loads the model, then times a generation per ``run``."""

    def __init__(self, setting: str, args: Any) -> None:
        command = [sys.executable, "-m", "bridge.frontends.beside_daw", setting, "--model", args.model,
                   "--seconds", str(args.seconds), "--device", args.device, "--precision", args.precision,
                   "--seed", str(args.seed)]
        if setting == "new":
            command += ["--priority", args.priority] + (["--threads", str(args.threads)] if args.threads else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=_env(passive=setting == "new"))
        self.stdin, self.stdout = _pipes(self.process)
        self.ready = _read_json(self.stdout, f"bridge ({setting})")

    def run(self) -> dict[str, Any]:
        self.stdin.write("run\n")
        self.stdin.flush()
        return _read_json(self.stdout, "bridge")

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=60)


def measure(args: Any, settings: Sequence[str] = ("old", "new")) -> dict[str, Any]:
    """Every phase, in order; the numbers as a dict (``format_table`` prints them)."""
    err = sys.stderr
    err.write(f"DAW stand-in alone for {STANDIN_ALONE_SECONDS:.0f} s ...\n")
    alone = StandIn()
    time.sleep(STANDIN_ALONE_SECONDS)
    result: dict[str, Any] = {"standin": {**alone.ready, "alone": alone.stop()}, "settings": {},
                              "model": args.model, "audio_seconds": args.seconds, "runs": args.runs,
                              "targets": {"missed_percent_at_most": TARGET_MISSED_PERCENT,
                                          "beside_over_alone_at_least": TARGET_KEPT_SPEED}}
    iterations = int(alone.ready["iterations"])
    for setting in settings:
        err.write(f"bridge with the {setting} compute settings: loading {args.model} ...\n")
        bridge = BridgeProcess(setting, args)
        try:
            runs_alone = [bridge.run() for _ in range(args.runs)]
            err.write(f"{setting}: alone {[round(r['realtime_factor'], 2) for r in runs_alone]}; now beside the "
                      "stand-in ...\n")
            standin = StandIn(iterations)
            runs_beside = [bridge.run() for _ in range(args.runs)]
            beside = standin.stop()
        finally:
            bridge.close()
        rtf_alone = statistics.median(r["realtime_factor"] for r in runs_alone)
        rtf_beside = statistics.median(r["realtime_factor"] for r in runs_beside)
        result["settings"][setting] = {
            **bridge.ready, "runs_alone": runs_alone, "runs_beside": runs_beside, "standin_beside": beside,
            "realtime_factor_alone": rtf_alone, "realtime_factor_beside": rtf_beside,
            "beside_over_alone": rtf_beside / rtf_alone,
            "meets_targets": beside["missed_percent"] <= TARGET_MISSED_PERCENT
            and rtf_beside / rtf_alone >= TARGET_KEPT_SPEED,
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    standin = result["standin"]
    lines = [f"DAW stand-in: {standin['block_ms']:.2f} ms blocks (256 frames at 48 kHz), {standin['work_ms']:.1f} ms "
             f"of work each, {standin['priority']}",
             f"bridge: {result['model']}, {result['audio_seconds']:g} s of audio, median of {result['runs']} runs",
             "",
             "| | stand-in missed deadlines | stand-in worst lateness | bridge real-time factor | beside / alone |",
             "|---|---|---|---|---|",
             f"| stand-in alone | {standin['alone']['missed_percent']:.2f}% | "
             f"{standin['alone']['worst_lateness_ms']:.1f} ms | | |"]
    for name, data in result["settings"].items():
        beside = data["standin_beside"]
        label = f"{'old defaults' if name == 'old' else 'new defaults'} ({data['compute']})"
        lines.append(f"| {label}, bridge alone | | | {data['realtime_factor_alone']:.2f}x | |")
        lines.append(f"| {label}, beside | {beside['missed_percent']:.2f}% | {beside['worst_lateness_ms']:.1f} ms | "
                     f"{data['realtime_factor_beside']:.2f}x | {data['beside_over_alone']:.2f} |")
    lines.append("")
    lines.append(f"targets: stand-in misses <= {TARGET_MISSED_PERCENT:g}% beside the bridge, bridge keeps >= "
                 f"{TARGET_KEPT_SPEED:g} of its alone speed; worst lateness below 0 ms: every block in time")
    return "\n".join(lines)


# -- the bridge process -------------------------------------------------------------------------------
def _answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _bridge_main(argv: Sequence[str]) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="the bridge side of bench --beside-daw")
    parser.add_argument("setting", choices=("old", "new"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--priority", default="low")
    args = parser.parse_args(argv)
    import torch  # noqa: PLC0415  (after the environment is set: OpenMP reads it once)

    from bridge.compute import apply_threads, plan_compute, yield_this_thread  # noqa: PLC0415
    from bridge.engine import Engine, GenerationSpec  # noqa: PLC0415
    from bridge.engine.decoding import Sampling  # noqa: PLC0415
    from bridge.engine.models import load_model  # noqa: PLC0415

    if args.setting == "new":
        plan = plan_compute(args.threads, args.priority)
        apply_threads(plan)
        said = yield_this_thread(plan)
        compute = f"{plan.threads} thread{'s' if plan.threads > 1 else ''}, {said.split(' (')[0]}, OpenMP passive"
        if said.startswith("normal priority (lowering it failed"):
            compute += f" ({said})"
    else:
        compute = f"{torch.get_num_threads()} threads, normal priority, OpenMP default wait"
    engine = Engine(load_model(args.model, device=args.device, precision=args.precision))
    frames = max(2, round(args.seconds * engine.frame_rate))

    def generate(length: int) -> float:
        """One piece as ``bench`` times the bridge: generation (guidance 3, top-k 250) and the codec."""
        spec = GenerationSpec(prompt=PROMPT, frames=length, seed=args.seed, sampling=Sampling(guidance=3.0, top_k=250))
        started = time.perf_counter()
        engine.decode(engine.generate_codes(spec))
        return time.perf_counter() - started

    generate(max(2, round(0.5 * engine.frame_rate)))  # warm-up
    fast = engine.loop.fast
    _answer({"ready": True, "compute": compute, "threads": torch.get_num_threads(),
             "kernel": fast.describe() if fast is not None else "transformers"})
    for line in sys.stdin:
        if line.strip() != "run":
            break
        seconds = generate(frames)
        _answer({"seconds": seconds, "realtime_factor": frames / engine.frame_rate / seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(_bridge_main(sys.argv[1:]))
