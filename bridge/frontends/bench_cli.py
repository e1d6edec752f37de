"""`musicgen-bridge bench`: the bridge's engine against plain transformers ``generate``, same machine,
same model, prompt, seed and length, runs interleaved in one process.

The baseline is ``generate`` as transformers' docs use it (fp32 on CPU, fp16 on CUDA, sampling with
guidance 3 and top-k 250); the bridge runs at its defaults (or ``--precision``). Both end with audio:
``generate`` decodes inside, the bridge decodes the codes with the same codec afterwards. A readable
table goes to stdout, progress to stderr, and ``--json FILE`` keeps every number, with ``speedup``
(median baseline seconds / median bridge seconds) at the top level.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.compute import apply_threads, plan_compute, yield_this_thread
from bridge.config import PRIORITY_HELP, THREADS_HELP

log = logging.getLogger(__name__)

DEFAULT_MODEL = "small-arch-random"
DEFAULT_PROMPT = "lo-fi hip hop with dusty keys, warm bass and a lazy swing beat"
FIRST_CHUNK_SECONDS = 0.5


def add_parsers(sub: Any) -> None:
    """Add ``bench`` to the CLI's subparsers."""
    p = sub.add_parser("bench", help="time the bridge's engine against plain transformers generate",
                       description="Run transformers' generate (as its docs do: fp32 on CPU, fp16 on GPU, guidance "
                                   "3, top-k 250) and the bridge's engine on the same model, prompt, seed and "
                                   "length, interleaved, and print ms per step, real-time factor, time to first "
                                   "audio, peak memory and the speedup.",
                       epilog="example: musicgen-bridge bench --model small-arch-random --seconds 10 --runs 3 "
                              "--json bench.json")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model to time (default {DEFAULT_MODEL}: the real "
                   "musicgen-small architecture with random weights, no download)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each piece (default 10)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each, interleaved (default 3)")
    p.add_argument("--precision", default="auto", help="the bridge's precision: auto (default: int8 on CPU, fp16 "
                   "on GPU), fp32, bf16, fp16, int8, int4")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt of every run")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--priority", default="low", help=PRIORITY_HELP)
    p.add_argument("--no-baseline", action="store_true", help="time the bridge alone (no speedup then)")
    p.add_argument("--jam-segments", type=int, default=3, help="after the runs, time this many jam segments "
                   "(default 3; 0 skips): generation time over segment length, time to the first segment")
    p.add_argument("--jam-bars", type=int, default=1, help="bars per jam segment, at 120 bpm in 4/4 (default 1)")
    p.add_argument("--beside-daw", action="store_true", help="instead: run a DAW stand-in (5.33 ms blocks, 2 ms of "
                   "work each) alone, then beside the bridge at the old and the new compute defaults; report its "
                   "missed deadlines and the bridge's real-time factor alone and beside it")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.set_defaults(handler=run_bench)


@dataclasses.dataclass
class RunTiming:
    """One timed run: wall time, when each decoding step ended, when the first audio was ready."""

    seconds: float
    step_ends: list[float]  # seconds since the run started
    first_audio: float
    peak_memory: int  # bytes

    def step_ms(self) -> list[float]:
        ends = self.step_ends
        return [(b - a) * 1000.0 for a, b in itertools.pairwise(ends)]


class _Memory:
    """Peak memory of a run: CUDA's allocator peak, or the process's resident set sampled per step."""

    def __init__(self, device: Any) -> None:
        import torch  # noqa: PLC0415

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.peak = 0

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        self.peak = self.rss()

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, self.rss())

    def result(self) -> int:
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated())
        self.sample()
        return self.peak

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Bench:
    """Holds both models and times one run of either."""

    def __init__(self, model: str, device: str, precision: str, prompt: str, seed: int, baseline: bool) -> None:
        import torch  # noqa: PLC0415

        from bridge.engine import Engine  # noqa: PLC0415
        from bridge.engine.models import load_model, pick_device, pick_dtype, pick_precision  # noqa: PLC0415

        self.torch = torch
        self.device = pick_device(device)
        base_precision = "fp16" if self.device.type == "cuda" else "fp32"
        bridge_precision = pick_precision(self.device, precision)
        self.prompt = prompt
        self.seed = seed
        started = time.perf_counter()
        first = load_model(model, device=str(self.device), precision=base_precision)
        self.baseline = first if baseline else None
        if pick_dtype(self.device, precision) == first.dtype:
            # the fast decoder leaves the modules alone: both can share one model
            bridge_loaded = dataclasses.replace(first, precision=bridge_precision)
        else:
            bridge_loaded = load_model(model, device=str(self.device), precision=precision)
        self.load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self.engine = Engine(bridge_loaded)
        self.prepare_seconds = time.perf_counter() - started
        self.memory = _Memory(self.device)
        self.loaded = bridge_loaded

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def frames_for(self, seconds: float) -> int:
        return max(2, round(seconds * self.loaded.frame_rate))

    def run_baseline(self, frames: int) -> RunTiming:
        """transformers' generate, sampling as in its docs; audio comes back at the end."""
        from transformers import LogitsProcessor, LogitsProcessorList  # noqa: PLC0415

        torch = self.torch
        loaded = self.baseline
        if loaded is None:
            raise RuntimeError("the bench was built without a baseline")
        sync, memory = self._sync, self.memory
        ends: list[float] = []
        start = 0.0

        class StepClock(LogitsProcessor):
            """Called once per decoding step, before sampling: the previous step has ended."""

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                sync()
                ends.append(time.perf_counter() - start)
                memory.sample()
                return scores

        ids, mask = loaded.tokenizer([self.prompt])
        ids, mask = ids.to(loaded.device), mask.to(loaded.device)
        k = loaded.num_codebooks // loaded.channels
        memory.reset()
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            audio = loaded.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=3.0,
                                          top_k=250, max_new_tokens=frames + k - 1,
                                          logits_processor=LogitsProcessorList([StepClock()]))
            audio.cpu()
        sync()
        total = time.perf_counter() - start
        return RunTiming(seconds=total, step_ends=ends, first_audio=total, peak_memory=memory.result())

    def run_bridge(self, frames: int) -> RunTiming:
        """The engine at its defaults, then the codec; the first 0.5 s chunk is decoded as soon as its frames
        (and the codec's lookahead) are complete, as streaming does."""
        from bridge.engine import GenerationSpec  # noqa: PLC0415
        from bridge.engine.decoding import Sampling  # noqa: PLC0415
        from bridge.engine.streaming import DEFAULT_LOOKAHEAD, StreamingDecoder  # noqa: PLC0415

        engine = self.engine
        chunk = max(1, min(frames, round(FIRST_CHUNK_SECONDS * self.loaded.frame_rate)))
        first_chunk = StreamingDecoder(engine, start_frame=0, total_frames=frames, chunk_frames=chunk)
        ends: list[float] = []
        first_audio: list[float] = []
        start = 0.0

        def on_progress(_fraction: float) -> None:
            self._sync()
            ends.append(time.perf_counter() - start)
            self.memory.sample()

        def on_frames(codes: Any, complete: int) -> None:
            if first_audio or complete < min(frames, chunk + DEFAULT_LOOKAHEAD):
                return
            first_chunk.feed(codes, complete)
            self._sync()
            first_audio.append(time.perf_counter() - start)

        spec = GenerationSpec(prompt=self.prompt, frames=frames, sampling=Sampling(guidance=3.0, top_k=250),
                              seed=self.seed)
        self.memory.reset()
        start = time.perf_counter()
        codes = engine.generate_codes(spec, progress=on_progress, on_frames=on_frames)
        engine.decode(codes)
        self._sync()
        total = time.perf_counter() - start
        return RunTiming(seconds=total, step_ends=ends, first_audio=first_audio[0] if first_audio else total,
                         peak_memory=self.memory.result())


def time_jam(bench: Bench, segments: int, bars: int) -> dict[str, Any]:
    """Run the jam as the daemon does (each segment continues the decoder state of the ones before) and
    time it: each segment's generation (and decode) time over its length."""
    from bridge.engine.jam import Jam, JamSettings  # noqa: PLC0415

    jam = Jam(bench.engine, JamSettings(prompt=bench.prompt, bpm=120.0, bars=bars, seed=bench.seed))
    lengths, times = [], []
    started = time.perf_counter()
    first = 0.0
    for index in range(segments):
        segment = jam.next_segment()
        bench._sync()
        if index == 0:
            first = time.perf_counter() - started
        lengths.append(segment.audio.shape[-1] / bench.engine.sample_rate)
        times.append(segment.generation_seconds)
        sys.stderr.write(f"jam segment {index + 1}/{segments}: {segment.generation_seconds:.2f} s\n")
    ratios = [t / a for t, a in zip(times, lengths, strict=True)]
    edge = min(3, max(1, segments // 2))
    return {"segments": segments, "bars": bars, "bpm": 120.0, "segment_seconds": lengths,
            "generation_seconds": times, "generation_over_length": ratios,
            "generation_over_length_median": statistics.median(ratios),
            "generation_over_length_max": max(ratios), "time_to_first_segment": first,
            # does the cost grow with the jam? the last segments' median over the first ones'
            "late_over_early": statistics.median(ratios[-edge:]) / statistics.median(ratios[:edge]),
            "edge_segments": edge, "reprompts": jam.reprompts, "positions_run": jam.positions_run,
            "frames": int(jam.codes.shape[-1])}


def _summary(runs: list[RunTiming], frames: int, frame_rate: float) -> dict[str, Any]:
    """Medians over the runs; early and late are the first and last tenth of the steps."""
    early, late, all_steps = [], [], []
    for run in runs:
        steps = run.step_ms()[1:]  # the first interval holds the prompt's forward pass
        tenth = max(1, len(steps) // 10)
        early.extend(steps[:tenth])
        late.extend(steps[-tenth:])
        all_steps.extend(steps)
    seconds = statistics.median(r.seconds for r in runs)
    audio_seconds = frames / frame_rate
    return {
        "seconds": seconds,
        "seconds_each": [r.seconds for r in runs],
        "ms_per_step_early": statistics.median(early) if early else None,
        "ms_per_step_late": statistics.median(late) if late else None,
        "ms_per_step_median": statistics.median(all_steps) if all_steps else None,
        "steps": len(runs[0].step_ends) if runs else 0,
        "realtime_factor": audio_seconds / seconds,
        "time_to_first_audio": statistics.median(r.first_audio for r in runs),
        "peak_memory_mb": max(r.peak_memory for r in runs) / 2**20,
    }


def _machine(device: Any) -> dict[str, Any]:
    import torch  # noqa: PLC0415

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "cpu": _cpu_name()}
    try:
        import transformers  # noqa: PLC0415

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _late_over_early(data: dict[str, Any]) -> float | None:
    early, late = data.get("ms_per_step_early"), data.get("ms_per_step_late")
    return late / early if early and late else None


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """The readable table: one column per contender."""
    columns = [("transformers generate", result.get("baseline")), ("bridge", result["bridge"])]
    columns = [(name, data) for name, data in columns if data is not None]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("device / precision", lambda d: f"{d['device']} {d['precision']}"),
        ("ms per step, early", lambda d: _fmt(d["ms_per_step_early"])),
        ("ms per step, median", lambda d: _fmt(d["ms_per_step_median"])),
        ("ms per step, late", lambda d: _fmt(d["ms_per_step_late"])),
        ("late / early step", lambda d: _fmt(_late_over_early(d), "x", 2)),
        ("real-time factor", lambda d: _fmt(d["realtime_factor"], "x", 2)),
        ("time to first audio", lambda d: _fmt(d["time_to_first_audio"], " s", 2)),
        ("wall time (median)", lambda d: _fmt(d["seconds"], " s", 2)),
        ("peak memory", lambda d: _fmt(d["peak_memory_mb"], " MB", 0)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    col = max(24, *(len(name) + 2 for name, _ in columns))
    lines = [f"{result['model']}, {result['audio_seconds']:.1f} s of audio, {result['runs']} runs each, "
             f"{result['machine']['cpu']} ({result['machine']['threads']} threads)"]
    lines.append("".ljust(width) + "".join(name.ljust(col) for name, _ in columns))
    for label, cell in rows:
        lines.append(label.ljust(width) + "".join(cell(data).ljust(col) for _, data in columns))
    jam = result.get("jam")
    if jam:
        lines.append(f"jam: {jam['segments']} segments of {jam['segment_seconds'][0]:.2f} s; generation time / "
                     f"segment length {jam['generation_over_length_median']:.2f} median, "
                     f"{jam['generation_over_length_max']:.2f} max; first segment after "
                     f"{jam['time_to_first_segment']:.2f} s")
        lines.append("jam segments (s): " + " ".join(f"{t:.2f}" for t in jam["generation_seconds"]))
        edge = jam["edge_segments"]
        cost = f"{jam['over_bridge']:.2f}x plain bridge generation's" if jam.get("over_bridge") else "-"
        lines.append(f"jam cost per second of audio: {cost} (median segment); last {edge} segments / first "
                     f"{edge}: {jam['late_over_early']:.2f}x; re-prompts {jam['reprompts']}")
    if result["bridge"].get("kernel"):
        lines.append(f"bridge's matrix kernel: {result['bridge']['kernel']}")
    if result.get("speedup") is not None:
        lines.append(f"speedup (generate wall time / bridge wall time): {result['speedup']:.2f}x")
    return "\n".join(line.rstrip() for line in lines)


def _run_beside_daw(args: argparse.Namespace) -> int:
    from bridge.frontends import beside_daw  # noqa: PLC0415

    plan_compute(args.threads, args.priority)  # bad values: refused before anything starts
    result = beside_daw.measure(args)
    result["machine"] = {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    sys.stdout.write(beside_daw.format_table(result) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        sys.stderr.write(f"wrote {args.json}\n")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` command."""

    from bridge.errors import BadArgs  # noqa: PLC0415

    if args.seconds <= 0 or args.runs < 1:
        raise BadArgs("bench needs --seconds above 0 and --runs of at least 1")
    if args.jam_segments < 0 or not 1 <= args.jam_bars <= 8:
        raise BadArgs("--jam-segments must be 0 or more and --jam-bars from 1 to 8")
    if args.beside_daw:
        return _run_beside_daw(args)
    # the bridge's own compute settings (bridge/compute.py), applied as the daemon applies them
    plan = plan_compute(args.threads, args.priority)
    apply_threads(plan)
    priority = yield_this_thread(plan)
    err = sys.stderr
    err.write(f"loading {args.model} ...\n")
    bench = Bench(args.model, args.device, args.precision, args.prompt, args.seed, baseline=not args.no_baseline)
    frames = bench.frames_for(args.seconds)
    err.write(f"loaded in {bench.load_seconds:.1f} s; bridge prepared its decoder in {bench.prepare_seconds:.1f} s\n")
    # warm-up: first calls build kernels, caches and allocator pools
    warm = bench.frames_for(min(args.seconds, 0.5))
    if bench.baseline is not None:
        bench.run_baseline(warm)
    bench.run_bridge(warm)
    contenders: dict[str, Callable[[int], RunTiming]] = {"bridge": bench.run_bridge}
    if bench.baseline is not None:
        contenders = {"baseline": bench.run_baseline, "bridge": bench.run_bridge}
    timings: dict[str, list[RunTiming]] = {name: [] for name in contenders}
    for run in range(args.runs):
        order = list(contenders) if run % 2 == 0 else list(reversed(contenders))
        for name in order:
            timing = contenders[name](frames)
            timings[name].append(timing)
            err.write(f"run {run + 1}/{args.runs} {name}: {timing.seconds:.2f} s\n")
    result: dict[str, Any] = {
        "speedup": None,
        "model": args.model,
        "audio_seconds": frames / bench.loaded.frame_rate,
        "frames": frames,
        "runs": args.runs,
        "prompt": args.prompt,
        "seed": args.seed,
        "machine": {**_machine(bench.device), "compute": plan.describe(), "priority": priority},
        "load_seconds": bench.load_seconds,
        "bridge_prepare_seconds": bench.prepare_seconds,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    base_dtype = "fp16" if bench.device.type == "cuda" else "fp32"
    fast = bench.engine.loop.fast
    result["bridge"] = {"device": str(bench.device), "precision": bench.loaded.precision,
                        "kernel": fast.describe() if fast is not None else "transformers",
                        **_summary(timings["bridge"], frames, bench.loaded.frame_rate)}
    if "baseline" in timings:
        result["baseline"] = {"device": str(bench.device), "precision": base_dtype,
                              **_summary(timings["baseline"], frames, bench.loaded.frame_rate)}
        result["speedup"] = result["baseline"]["seconds"] / result["bridge"]["seconds"]
    if args.jam_segments:
        err.write(f"timing {args.jam_segments} jam segment(s) ...\n")
        result["jam"] = time_jam(bench, args.jam_segments, args.jam_bars)
        # the jam's generation time per second of audio over plain generation's, same engine, same run
        bridge_per_second = result["bridge"]["seconds"] / result["audio_seconds"]
        result["jam"]["over_bridge"] = result["jam"]["generation_over_length_median"] / bridge_per_second
    table = format_table(result)
    sys.stdout.write(table + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        err.write(f"wrote {args.json}\n")
    return 0
