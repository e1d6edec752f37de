"""Loop and fill jobs: their limits, the engine's bridged generation, and the cut to exactly the asked samples.

A loop is N bars (or seconds) that repeat without a seam: the engine generates the body, samples
``candidates`` bridges from the body's end back into its start and keeps the one after which the
model finds the body's opening likeliest, then decodes the whole circularly (``bridge.engine.loops``).
The period is fitted to the exact sample count of the bars by FFT resampling of one period, which
keeps it periodic (a stretch of at most half a codec frame).

A fill continues the clip before it and leads into the clip after it: the bridges follow the first
clip's end and are scored by the second clip's opening. The codec decodes [first's end | fill |
second's opening]; the fill is cut at the first clip's rate and channel count, and its edges carry
the difference between each clip and the codec's rendering of it (mirrored across the seam, fading
out), so both seams step from the user's own sample to the fill as smoothly as the codec's own audio.
With ``include_prompt`` the file is first clip + fill + second clip, the user's audio bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from bridge import audio
from bridge.app.planning import Plan, prompt_frames_for
from bridge.app.rendering import Renderer
from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.loops import (
    bridge_steps,
    circular_decode,
    decode_context_frames,
    fit_period,
    head_needed,
    sample_bridges,
)
from bridge.errors import BadArgs, BadAudio
from bridge.options import Request

LOOP_MODES = ("loop", "infill")
LOOP_BRIDGE_SECONDS = 1.0  # a loop's bridge back into its start (at most a quarter of the loop)
MIN_LOOP_SECONDS = 1.0
SEAM_BLEND_SECONDS = 0.02  # how far the clip-vs-codec difference reaches into a fill
SEED_SPACE = 2**63


def model_samples(request_samples: int, out_rate: int, eng: Engine) -> Fraction:
    return Fraction(request_samples * eng.sample_rate, out_rate)


def check(request: Request, eng: Engine, out_samples: int, out_rate: int) -> None:
    """BadArgs for a loop or fill the engine cannot make, before it is queued."""
    if request.stream:
        raise BadArgs(f"{request.mode} decodes the whole result at once (circularly or between two clips): "
                      "use stream 0")
    samples = model_samples(out_samples, out_rate, eng)
    frames = samples / eng.hop
    if request.mode == "loop":
        if frames < MIN_LOOP_SECONDS * eng.frame_rate:
            raise BadArgs(f"a loop of {float(samples) / eng.sample_rate:.3f} s is too short: give at least "
                          f"{MIN_LOOP_SECONDS:g} s (or more bars)")
        return
    if samples < eng.hop:
        raise BadArgs(f"a fill of {float(samples) / eng.sample_rate * 1000:.1f} ms is shorter than one codec frame "
                      f"({eng.hop / eng.sample_rate * 1000:.0f} ms): ask for a longer fill")
    longest = max_fill_frames(eng)
    if math.ceil(frames) > longest:
        raise BadArgs(f"a fill of {float(samples) / eng.sample_rate:.1f} s does not fit the model's window with the "
                      f"clips around it: give at most {longest / eng.frame_rate:.1f} s")
    if request.normalize != "off":
        raise BadArgs("a fill keeps the level of the clips around it: use normalize off")


def max_fill_frames(eng: Engine) -> int:
    """The longest fill: the window less the scored head and the first clip's context the codec decodes."""
    return eng.window_frames - head_needed(eng) - decode_context_frames(eng.frame_rate, eng.window_frames) - 1


def _sampling(request: Request, text: str) -> Sampling:
    guided = bool(text.strip() or request.negative.strip())
    return Sampling(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                    guidance=request.guidance if guided else 1.0)


def _generator(eng: Engine, seed: int) -> torch.Generator:
    return torch.Generator(device=eng.loaded.device).manual_seed(seed % SEED_SPACE)


def _choice_details(choice: Any) -> dict[str, Any]:
    return {"candidates": [round(s, 5) for s in choice.scores], "winner": choice.winner,
            "head_tokens": choice.head_tokens, "score": "mean log-likelihood per head token (nats)"}


class LoopMaker:
    """Makes loop and fill jobs on the engine; one caller at a time (the worker)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def loop(self, request: Request, plan: Plan, seed: int, progress: Callable[[float], None],
             is_cancelled: Callable[[], bool]) -> tuple[np.ndarray, dict[str, Any]]:
        """(channels, plan.out_samples) audio that loops seamlessly, and what the sidecar records of it."""
        eng = self.engine
        samples = model_samples(plan.out_samples, plan.out_rate, eng)
        frames = max(1, round(samples / eng.hop))
        bridge = max(1, min(round(LOOP_BRIDGE_SECONDS * eng.frame_rate), frames // 4))
        body_frames = frames - bridge
        head = head_needed(eng)
        if body_frames < head:
            raise BadArgs(f"a loop of {frames} frames is too short to score its bridge: give at least "
                          f"{MIN_LOOP_SECONDS:g} s")
        sampling = _sampling(request, plan.text)
        body_steps = eng.total_steps(body_frames, 0)
        total = body_steps + bridge_steps(eng, bridge)
        spec = GenerationSpec(prompt=plan.text, frames=body_frames, sampling=sampling, seed=seed,
                              negative=request.negative)
        body = eng.generate_codes(spec, progress=lambda f: progress(f * body_steps / total),
                                  is_cancelled=is_cancelled)
        context = body[:, :, max(0, body_frames - (eng.window_frames - bridge - head - 1)):]
        choice = sample_bridges(eng, plan.text, request.negative, sampling, _generator(eng, seed + 1), context,
                                bridge, body[:, :, :head], request.candidates,
                                on_step=lambda _c, steps: progress(min(1.0, (body_steps + steps) / total)),
                                is_cancelled=is_cancelled)
        period = circular_decode(eng, torch.cat([body, choice.best], dim=-1))
        wave = fit_period(period, plan.out_samples)
        details = {"kind": "loop", "frames": frames, "bridge_frames": bridge,
                   "stretch": round(float(Fraction(plan.out_samples, plan.out_rate) * eng.frame_rate / frames), 6),
                   **_choice_details(choice)}
        return audio.normalize(wave, plan.out_rate, request.normalize), details

    def infill(self, request: Request, plan: Plan, before: audio.Clip, after: audio.Clip, seed: int,
               progress: Callable[[float], None], is_cancelled: Callable[[], bool]
               ) -> tuple[np.ndarray, dict[str, Any]]:
        """The fill between ``before`` and ``after`` at ``plan.out_rate`` and ``before``'s channels
        (with ``include_prompt``: before + fill + after), and what the sidecar records of it."""
        eng = self.engine
        rate, channels = plan.out_rate, before.data.shape[0]
        fill_frames = math.ceil(model_samples(plan.out_samples, rate, eng) / eng.hop)
        head = head_needed(eng)
        if after.samples * eng.sample_rate < head * eng.hop * after.sample_rate:
            raise BadAudio(f"clip {after.path} is {after.seconds:.3f} s long: a fill needs at least "
                           f"{head / eng.frame_rate:.2f} s of the clip it leads into")
        context = min(prompt_frames_for(request, before, eng), eng.window_frames - fill_frames - head - 1)
        before_codes = eng.encode_audio(Renderer(eng).prompt_audio(before, context))
        after_wave = audio.match_channels(audio.resample(after.data, after.sample_rate, eng.sample_rate), eng.channels)
        after_codes = eng.encode_audio(audio.fit_length(after_wave[:, : head * eng.hop], head * eng.hop))
        sampling = _sampling(request, plan.text)
        total = bridge_steps(eng, fill_frames)
        choice = sample_bridges(eng, plan.text, request.negative, sampling, _generator(eng, seed), before_codes,
                                fill_frames, after_codes, request.candidates,
                                on_step=lambda _c, steps: progress(min(1.0, steps / total)),
                                is_cancelled=is_cancelled)
        shown = decode_context_frames(eng.frame_rate, context)  # what the codec sees of the first clip
        decoded = eng.decode(torch.cat([before_codes[:, :, context - shown :], choice.best, after_codes], dim=-1))[0]
        wave = audio.match_channels(audio.resample(decoded, eng.sample_rate, rate), channels)
        first = _converted(before, rate, channels)
        second = _converted(after, rate, channels)
        seam = round(Fraction(shown * eng.hop * rate, eng.sample_rate))
        fill = mend_seams(wave, seam, plan.out_samples, first, second, round(SEAM_BLEND_SECONDS * rate))
        fill = audio.soft_limit(fill)
        details = {"kind": "infill", "fill_frames": fill_frames, "context_frames": context, **_choice_details(choice),
                   "before": _clip_facts(before, rate, channels), "after": _clip_facts(after, rate, channels)}
        if request.include_prompt:
            return np.concatenate([first, fill, second], axis=-1), details
        return fill, details


def mend_seams(wave: np.ndarray, seam: int, samples: int, before: np.ndarray, after: np.ndarray,
               reach: int) -> np.ndarray:
    """``wave[:, seam : seam + samples]`` with each edge carrying the difference between the clip beside it
    and the codec's audio at that place, mirrored across the seam and fading out over ``reach`` samples.

    At the first seam the fill's first sample is then the codec's next step from ``before``'s last sample,
    and at the second the fill's last sample leads into ``after``'s first the same way.
    """
    fill = audio.fit_length(wave[:, seam : seam + samples], samples).copy()
    reach = min(reach, samples // 2, before.shape[-1], after.shape[-1], seam)
    if reach < 1:
        return fill
    fade = (0.5 + 0.5 * np.cos(np.linspace(0.0, math.pi, reach))).astype(np.float32)  # 1 -> 0
    rendered_before = wave[:, seam - reach : seam]
    fill[:, :reach] += fade * (before[:, -reach:] - rendered_before)[:, ::-1]
    beyond = audio.fit_length(wave[:, seam + samples : seam + samples + reach], reach)
    fill[:, samples - reach :] += (fade * (after[:, :reach] - beyond))[:, ::-1]
    return fill


def _converted(clip: audio.Clip, rate: int, channels: int) -> np.ndarray:
    """The clip at ``rate`` with ``channels``: its own samples, untouched, when they already are."""
    data = clip.data if clip.sample_rate == rate else audio.resample(clip.data, clip.sample_rate, rate)
    return data if data.shape[0] == channels else audio.match_channels(data, channels)


def _clip_facts(clip: audio.Clip, rate: int, channels: int) -> dict[str, Any]:
    facts: dict[str, Any] = {"path": str(clip.path), "sha256": clip.sha256, "sample_rate": clip.sample_rate,
                             "channels": int(clip.data.shape[0]), "samples": clip.samples}
    if clip.sample_rate != rate or clip.data.shape[0] != channels:
        facts["converted_to"] = {"sample_rate": rate, "channels": channels}
    return facts
