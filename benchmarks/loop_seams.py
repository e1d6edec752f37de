"""Loops and fills measured: the wrap against every other sample boundary, the bridge choice, and its cost.

    python benchmarks/loop_seams.py --model small-arch-random --bpm 120 --bars 2 --seeds 3 --json out.json

Random weights cannot tell music from noise: these measures hold regardless of what the audio sounds
like. The seam: at a loop's wrap (last sample -> first) the sample jump and the spectral flux (the L2
change of the magnitude spectrum between the ``--window`` samples before a boundary and those after
it) against the same measure at every other sample boundary of the file, as a rank (the share of
boundaries with a smaller value: a typical boundary sits near 0.5, a hard seam at 1.0). Shown for a
``/musicgen/loop`` result, for a plain generation of the same length as the file it writes (faded
ends) and as its raw decode (no fades). The choice: the winning candidate's head likelihood against
the candidates' mean. The cost: wall time of a loop job with K candidates and with one, and of the
bridge phase alone with K and with one, against a plain generation of the same length, same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bridge.app import planning
from bridge.app.bridge import Bridge
from bridge.app.loops import LOOP_BRIDGE_SECONDS
from bridge.config import Config
from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.loops import head_needed, sample_bridges
from bridge.engine.models import load_model


def boundary_ranks(x: np.ndarray, window: int) -> dict[str, float]:
    """The wrap's sample jump and spectral flux, and their ranks among every boundary of the looped file."""
    mono = x.mean(axis=0)
    n = mono.shape[0]
    jumps = np.abs(np.diff(np.concatenate([mono, mono[:1]])))  # jumps[i]: boundary i -> i+1; jumps[-1]: the wrap
    wrap_jump, inside_jumps = float(jumps[-1]), jumps[:-1]
    looped = np.concatenate([mono[-window:], mono, mono[:window]])
    hann = np.hanning(window)
    flux = np.empty(n)
    chunk = 8192
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        frames = np.lib.stride_tricks.sliding_window_view(looped[start : stop - 1 + 2 * window], window)
        spec = np.abs(np.fft.rfft(frames * hann, axis=-1))
        # boundary b (between sample b - 1 and b of the file; b = 0 is the wrap): windows before and after it
        flux[start:stop] = np.linalg.norm(spec[window : window + stop - start] - spec[: stop - start], axis=-1)
    wrap_flux, inside_flux = float(flux[0]), flux[1:]
    return {
        "wrap_jump": wrap_jump, "jump_median": float(np.median(inside_jumps)),
        "jump_p99": float(np.percentile(inside_jumps, 99)), "wrap_jump_rank": float(np.mean(inside_jumps < wrap_jump)),
        "wrap_flux": wrap_flux, "flux_median": float(np.median(inside_flux)),
        "flux_p99": float(np.percentile(inside_flux, 99)), "wrap_flux_rank": float(np.mean(inside_flux < wrap_flux)),
    }


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _job(bridge: Bridge, mode: str, prompt: str, options: dict[str, Any]) -> tuple[Any, float]:
    request = bridge.make_request(mode, prompt, None, None, options)
    return _timed(lambda: bridge.run(f"bench-{mode}", request, lambda f: None, lambda: False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small-arch-random")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--prompt", default="warm analog pads with a slow arpeggio")
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--bars", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--window", type=int, default=512, help="samples each side of a boundary for the flux")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    engine = Engine(load_model(args.model, precision=args.precision))
    out = Path(tempfile.mkdtemp(prefix="loop-seams-"))
    bridge = Bridge(engine, Config(model=args.model, output_dir=out))
    length = {"bpm": args.bpm, "bars": args.bars}
    _job(bridge, "text", args.prompt, {**length, "seed": 99})  # warm-up: kernels, allocator
    rows: list[dict[str, Any]] = []
    for seed in range(1, args.seeds + 1):
        plain, plain_s = _job(bridge, "text", args.prompt, {**length, "seed": seed})
        loop, loop_s = _job(bridge, "loop", args.prompt, {**length, "seed": seed, "candidates": args.candidates})
        _single, single_s = _job(bridge, "loop", args.prompt, {**length, "seed": seed, "candidates": 1})
        details = json.loads(loop.sidecars[0].read_text())["loop"]
        scores = details["candidates"]
        # the plain generation's raw decode (what it is before its ends are faded), same length
        request = bridge.make_request("text", args.prompt, None, None, {**length, "seed": seed})
        plan = planning.plan(request, None, engine)
        sampling = Sampling(temperature=request.temperature, top_k=request.top_k, guidance=request.guidance)
        codes = engine.generate_codes(GenerationSpec(prompt=plan.text, frames=plan.frames, sampling=sampling,
                                                     seed=seed))
        raw = engine.decode(codes)[0][:, : plan.out_samples]
        # the bridge phase alone, K candidates against one, from the same context
        bridge_frames = max(1, min(round(LOOP_BRIDGE_SECONDS * engine.frame_rate), details["frames"] // 4))
        body = details["frames"] - bridge_frames
        context = codes[:, :, max(0, body - (engine.window_frames - bridge_frames - head_needed(engine) - 1)) : body]
        head = codes[:, :, : head_needed(engine)]

        def phase(k: int, seed: int = seed, context: torch.Tensor = context, head: torch.Tensor = head,
                  bridge_frames: int = bridge_frames, text: str = plan.text, sampling: Sampling = sampling) -> Any:
            generator = torch.Generator(device=engine.loaded.device).manual_seed(seed)
            return sample_bridges(engine, text, "", sampling, generator, context, bridge_frames, head, k)

        _, phase_k = _timed(lambda: phase(args.candidates))
        _, phase_1 = _timed(lambda: phase(1))
        loop_audio = sf.read(loop.paths[0], always_2d=True)[0].T
        plain_audio = sf.read(plain.paths[0], always_2d=True)[0].T
        rows.append({
            "seed": seed,
            "seam": {"loop": boundary_ranks(loop_audio, args.window),
                     "plain_file": boundary_ranks(plain_audio, args.window),
                     "plain_raw": boundary_ranks(raw, args.window)},
            "selection": {"scores": scores, "winner": details["winner"], "winner_score": max(scores),
                          "mean_score": statistics.fmean(scores), "winner_minus_mean": max(scores) - statistics.fmean(scores)},
            "seconds": {"plain_job": plain_s, "loop_job_k": loop_s, "loop_job_1": single_s, "bridge_phase_k": phase_k,
                        "bridge_phase_1": phase_1},
        })
        print(f"seed {seed}: loop {loop_s:.2f} s (K={args.candidates}), {single_s:.2f} s (K=1), plain {plain_s:.2f} s; "
              f"bridge phase {phase_k:.2f} s (K={args.candidates}) vs {phase_1:.2f} s (K=1)", flush=True)

    def median(path: list[str]) -> float:
        values = []
        for row in rows:
            value: Any = row
            for key in path:
                value = value[key]
            values.append(float(value))
        return statistics.median(values)

    summary: dict[str, dict[str, Any]] = {
        "seam": {kind: {m: median(["seam", kind, m]) for m in ("wrap_jump", "jump_median", "jump_p99", "wrap_jump_rank",
                                                               "wrap_flux", "flux_median", "flux_p99", "wrap_flux_rank")}
                 for kind in ("loop", "plain_file", "plain_raw")},
        "selection": {"winner_minus_mean_nats": median(["selection", "winner_minus_mean"]),
                      "winner_score": median(["selection", "winner_score"]),
                      "mean_score": median(["selection", "mean_score"])},
        "cost": {"loop_k_over_plain": median(["seconds", "loop_job_k"]) / median(["seconds", "plain_job"]),
                 "loop_1_over_plain": median(["seconds", "loop_job_1"]) / median(["seconds", "plain_job"]),
                 "bridge_phase_k_over_1": median(["seconds", "bridge_phase_k"]) / median(["seconds", "bridge_phase_1"]),
                 "plain_job_s": median(["seconds", "plain_job"]), "loop_job_k_s": median(["seconds", "loop_job_k"]),
                 "loop_job_1_s": median(["seconds", "loop_job_1"]),
                 "bridge_phase_k_s": median(["seconds", "bridge_phase_k"]),
                 "bridge_phase_1_s": median(["seconds", "bridge_phase_1"])},
    }
    # a control that shows the measure sees a hard seam: a tone cut where its phase does not return
    rate = engine.sample_rate
    n = int(args.bars * 4 * 60 / args.bpm * rate)
    tone = (0.3 * np.sin(2 * np.pi * 220.7 * np.arange(n) / rate))[None].astype(np.float32)
    summary["seam"]["control_tone_cut"] = boundary_ranks(tone, args.window)
    result = {
        "what": "loop seams, bridge selection and cost (benchmarks/loop_seams.py)",
        "note": "random weights: the audio is not music; the seam ranks, the likelihood ordering and the cost hold "
                "regardless",
        "model": args.model, "precision": engine.loaded.precision, "device": str(engine.loaded.device),
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "bpm": args.bpm, "bars": args.bars, "candidates": args.candidates, "window": args.window,
        "summary": summary, "runs": rows,
    }
    print(json.dumps(summary, indent=2), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
