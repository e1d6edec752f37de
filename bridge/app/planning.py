"""Planning: the sample-exact layout of a job, worked out before any generation (pure arithmetic).

"8 bars at 92 bpm continuing this 44.1 kHz clip" becomes the exact number of output samples, the
text sent to the model, the frames to generate and where the new audio starts. Nothing here runs
the model: it reads the engine's rates and window only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from bridge import tempo
from bridge.errors import BadArgs, BadAudio
from bridge.options import OPTIONS, Request

DEFAULT_PROMPT_SECONDS = 8.0
MIN_PROMPT_SECONDS = 0.1


class EngineFacts(Protocol):
    """What planning reads of the engine: its rate, hop, frame rate and window."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def hop(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def window_frames(self) -> int: ...

    def frames_for_samples(self, samples: int) -> int: ...


class ClipFacts(Protocol):
    """What planning reads of a clip: its path, rate and whole length (a ClipInfo from its header, or a Clip)."""

    @property
    def path(self) -> Path: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class Plan:
    """The sample-exact layout of one job."""

    out_rate: int
    out_samples: int
    text: str
    frames: int
    prompt_frames: int
    seam: int  # where the new audio starts in the decoded audio, at ``out_rate``
    rate_note: str = ""  # why the output is not at the clip's rate, for the user; "" when nothing to say


def output_rate(request: Request, clip: ClipFacts | None, eng: EngineFacts) -> tuple[int, str]:
    """The output rate and a note for the user when a continuation cannot keep its clip's rate.

    ``sample_rate`` when given; else a continuation or a fill (which sit on their clip's track; a
    fill: the first clip's) keeps its clip's rate while that is one the ``sample_rate`` option
    accepts, and is written at the model's rate otherwise (saying so).
    """
    if request.sample_rate:
        return request.sample_rate, ""
    if clip is None or request.mode not in ("continue", "infill"):
        return eng.sample_rate, ""
    spec = OPTIONS["sample_rate"]
    if spec.in_range(clip.sample_rate):
        return clip.sample_rate, ""
    return eng.sample_rate, (f"clip {clip.path} runs at {clip.sample_rate} Hz, and results are written at "
                             f"{spec.limits()}: the {'fill' if request.mode == 'infill' else 'continuation'} is written at {eng.sample_rate} Hz (give "
                             "sample_rate to choose another)")


def plan(request: Request, clip: ClipFacts | None, eng: EngineFacts) -> Plan:
    """Exact output length, rate and the frames to generate for ``request``."""
    out_rate, rate_note = output_rate(request, clip, eng)
    text = key_text(request.prompt, request.key)
    if request.bars is not None and request.bpm is not None:
        out_samples = tempo.bars_to_samples(request.bars, request.bpm, out_rate, request.beats_per_bar)
        text = tempo.tempo_text(text, request.bpm, request.beats_per_bar) if text.strip() else text
    else:
        out_samples = round((request.seconds or 0.0) * out_rate)
    if out_samples < 1:
        raise BadArgs("the asked length is under one sample: give more seconds or bars")
    prompt_frames = 0
    if request.mode == "continue" and clip is not None:
        prompt_frames = prompt_frames_for(request, clip, eng)
    model_samples = math.ceil(Fraction(out_samples * eng.sample_rate, out_rate)) + 64  # resampler margin
    frames = prompt_frames + eng.frames_for_samples(model_samples)
    seam = round(Fraction(prompt_frames * eng.hop * out_rate, eng.sample_rate))
    return Plan(out_rate=out_rate, out_samples=out_samples, text=text, frames=frames,
                prompt_frames=prompt_frames, seam=seam, rate_note=rate_note)


def key_text(prompt: str, key: str | None) -> str:
    """The text prompt with the key in words ("dusty keys, in A minor"), as captions state a key."""
    if not key or not prompt.strip() or f"in {key.lower()}" in prompt.lower():
        return prompt
    return f"{prompt.rstrip(' .,')}, in {key}"


def prompt_frames_for(request: Request, clip: ClipFacts, eng: EngineFacts) -> int:
    """How many frames of the clip's end a continuation uses as its prompt (whole bars with a tempo)."""
    if request.prompt_seconds is not None:
        want = request.prompt_seconds
    elif request.bpm is not None:
        bar = float(tempo.bar_seconds(request.bpm, request.beats_per_bar))
        bars = max(1, min(tempo.whole_bars_near(DEFAULT_PROMPT_SECONDS, request.bpm, request.beats_per_bar),
                          int(clip.seconds // bar)))
        want = bars * bar
    else:
        want = DEFAULT_PROMPT_SECONDS
    want = min(want, clip.seconds, (eng.window_frames - 1) / eng.frame_rate * 0.9)
    frames = int(want * eng.frame_rate)
    if frames < max(1, int(MIN_PROMPT_SECONDS * eng.frame_rate)):
        raise BadAudio(f"clip {clip.path} is {clip.seconds:.3f} s long: continuation needs at least "
                       f"{MIN_PROMPT_SECONDS} s of audio")
    return frames
