"""Planning: the sample-exact layout of a job, worked out before any generation (pure arithmetic).

"8 bars at 92 bpm continuing this 44.1 kHz clip" becomes the exact number of output samples, the
text sent to the model, the frames to generate and where the new audio starts. Nothing here runs
the model: it reads the engine's rates and window only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from bridge import audio, tempo
from bridge.errors import BadArgs, BadAudio
from bridge.options import Request

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


@dataclass(frozen=True)
class Plan:
    """The sample-exact layout of one job."""

    out_rate: int
    out_samples: int
    text: str
    frames: int
    prompt_frames: int
    seam: int  # where the new audio starts in the decoded audio, at ``out_rate``


def plan(request: Request, clip: audio.Clip | None, eng: EngineFacts) -> Plan:
    """Exact output length, rate and the frames to generate for ``request``."""
    rate_default = clip.sample_rate if (clip is not None and request.mode == "continue") else eng.sample_rate
    out_rate = request.sample_rate or rate_default
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
                prompt_frames=prompt_frames, seam=seam)


def key_text(prompt: str, key: str | None) -> str:
    """The text prompt with the key in words ("dusty keys, in A minor"), as captions state a key."""
    if not key or not prompt.strip() or f"in {key.lower()}" in prompt.lower():
        return prompt
    return f"{prompt.rstrip(' .,')}, in {key}"


def prompt_frames_for(request: Request, clip: audio.Clip, eng: EngineFacts) -> int:
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
