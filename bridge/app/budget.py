"""A job's cost, worked out before it is accepted: the samples it writes and the memory it holds at its peak.

Seconds alone do not bound a job: ``600 s x 192 kHz x 8 variations`` is a legal length and 23 GB
of arrays. So every request is costed from its plan (after bars are converted, at the output rate)
and the clip's header, and refused before any work when it is over either limit, with what to ask
instead. The memory is counted stage by stage as the pipeline holds it (float32 = 4 bytes; scipy's
resampler and the loudness filter work in float64 = 8):

- read: the clip's samples the job decodes (only the prompt's tail for a plain continuation), as
  float32, plus their resampling to the model's rate;
- decode: the codec at work on one variation and channel at a time (its layers' activations, measured
  once on the codec: ``Engine.codec_bytes_per_sample``; about 1.7 kB a sample for the 32 kHz EnCodec,
  more than the audio itself by far) and every variation's audio it gives, at the model's rate, over
  what it decodes: a loop's and a fill's context around their frames too (up to 2 s more);
- kept: every finished variation at the output rate (the clip in front with ``include_prompt``);
- post-process (one variation at a time): resampling to the output rate, the cut, fade, channel
  and loudness copies, and the transposed copy the file writer makes.

- tokens: the decoder's key/value cache while the tokens are made, for every variation (a loop's or a
  fill's candidates when there are more of them) and its guidance row, over one window at most: often
  the largest stage (musicgen-large on the CPU in float32: about 1.1 GB a row for 30 s). It is counted in
  the machine's memory on the CPU; on a GPU it is checked against the GPU memory free when the model was
  loaded (``Limits.max_device_bytes``), the rest against the machine's; so is the codec's work.

The stages do not all live at once: the cache is let go before the codec runs, and the codec's
working memory before the post-processing. The peak is the clip's part plus the largest of the token
phase (the cache) and the rest (decode, kept and post-process together: a bound, not a sum of phases).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

from bridge.app.planning import EngineFacts, Plan
from bridge.engine.loops import HEAD_SECONDS, decode_context_frames
from bridge.errors import BadArgs
from bridge.options import MAX_SECONDS, MAX_VARIATIONS, Request

F32 = 4
F64 = 8
MAX_JOB_SAMPLES = MAX_VARIATIONS * 2 * round(MAX_SECONDS) * 48_000
"""Samples one job may write (all channels and variations): eight stereo variations of the longest job at 48 kHz."""
MEMORY_SHARE = 0.5
"""The default memory limit of a job: this share of the machine's physical memory."""
MIN_MEMORY = 512 * 1024 * 1024
FALLBACK_MEMORY = 4 * 1024**3
"""The default when the machine's memory cannot be read."""
TAIL_MARGIN_SECONDS = 0.05
"""Read a little more than the prompt needs, so rounding at the clip's rate never cuts it short."""


class ClipShape(Protocol):
    """What costing reads of a clip: its header (a :class:`bridge.audio.ClipInfo`, or a read Clip)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def frames(self) -> int: ...

    @property
    def channels(self) -> int: ...


class ModelFacts(EngineFacts, Protocol):
    @property
    def channels(self) -> int: ...

    def codec_bytes_per_sample(self) -> int: ...

    @property
    def works_on_host(self) -> bool: ...

    def cache_bytes(self, rows: int, frames: int, text_tokens: int) -> int: ...


@dataclass(frozen=True)
class Limits:
    """How much one job may cost: samples written, bytes of memory held at its peak, and bytes of a GPU's
    memory (None: the model runs on the CPU, or the GPU does not say)."""

    max_samples: int = MAX_JOB_SAMPLES
    max_bytes: int = FALLBACK_MEMORY
    max_device_bytes: int | None = None

    @classmethod
    def for_machine(cls, max_memory_mb: int | None = None, device_bytes: int | None = None) -> Limits:
        """The limits for this machine: ``max_memory_mb`` when given, else half its physical memory; and the
        GPU memory free for a job (``device_bytes``, after the model was loaded; None on the CPU)."""
        if max_memory_mb is not None:
            if max_memory_mb < 1:
                raise BadArgs(f"the job memory limit must be 1 MB or more, got {max_memory_mb}")
            return cls(max_bytes=max_memory_mb * 1024 * 1024, max_device_bytes=device_bytes)
        total = physical_memory()
        return cls(max_bytes=max(MIN_MEMORY, int(total * MEMORY_SHARE)) if total else FALLBACK_MEMORY,
                   max_device_bytes=device_bytes)


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Cost:
    """What a job costs: the samples it writes, the memory each stage holds, and its peak."""

    samples: int
    stages: dict[str, int]
    peak_bytes: int
    shape: str  # "600 s x 192000 Hz x 1 channel x 8 variations"
    device_bytes: int = 0  # on a GPU: the larger of the decoder's cache and the codec's work (0 on the CPU)


def prompt_tail_seconds(request: Request, plan: Plan, eng: EngineFacts) -> float | None:
    """Seconds of the clip's end a job needs decoded; None when it needs the whole clip."""
    if request.mode != "continue" or request.include_prompt:
        return None
    return plan.prompt_frames * eng.hop / eng.sample_rate + TAIL_MARGIN_SECONDS


def clip_frames_read(request: Request, plan: Plan, clip: ClipShape, eng: EngineFacts) -> int:
    tail = prompt_tail_seconds(request, plan, eng)
    if tail is None:
        return int(clip.frames)
    return min(int(clip.frames), math.ceil(tail * clip.sample_rate))


def cache_shape(request: Request, plan: Plan, eng: EngineFacts) -> tuple[int, int]:
    """(rows, frames) of the largest decoder cache the job holds at once: every variation and its guidance
    row over the job's frames (the engine counts one window at most). A loop's or a fill's bridges are
    sampled in one batch of candidates beside one more row that reads their shared context, over the
    context, the bridge and the head it is scored on: for a loop, its frames and a second more at most;
    for a fill, whose context comes from its first clip, the whole window."""
    guided = 2 if request.guidance > 1.0 else 1
    if request.mode == "loop":
        return guided * (request.candidates + 1), plan.frames + math.ceil(eng.frame_rate)
    if request.mode == "infill":
        return guided * (request.candidates + 1), eng.window_frames
    return guided * max(1, request.variations), plan.frames


#: the codebooks' delay a fill's head carries, in frames: at most 8 (codebooks - 1, stereo has 8)
DELAY_FRAMES_BOUND = 8


def decode_frames(request: Request, plan: Plan, eng: EngineFacts) -> int:
    """Frames the codec decodes for one variation: the job's own, and for a loop or a fill the context
    around them (a loop's context is its own end and start, so no more than its length on each side)."""
    if request.mode == "loop":  # its end before it and its start after it
        return plan.frames + 2 * decode_context_frames(eng.frame_rate, plan.frames)
    if request.mode == "infill":  # the first clip's last second before it, the second clip's head after it
        sides = decode_context_frames(eng.frame_rate, eng.window_frames) + math.ceil(HEAD_SECONDS * eng.frame_rate)
        return plan.frames + sides + DELAY_FRAMES_BOUND
    return plan.frames


def job_cost(request: Request, plan: Plan, clip: ClipShape | None, eng: ModelFacts, text_tokens: int = 1) -> Cost:
    """The samples ``request`` writes and the memory it holds, stage by stage (see the module docstring).

    ``text_tokens``: the longer of the prompt's and the negative prompt's token counts.
    """
    variations = max(1, request.variations)
    model_ch = eng.channels
    model_samples = plan.frames * eng.hop
    out_ch = model_ch
    stages: dict[str, int] = {}
    clip_out = 0
    if clip is not None:
        read = clip_frames_read(request, plan, clip, eng)
        at_model = math.ceil(read * eng.sample_rate / clip.sample_rate)
        stages["read"] = clip.channels * (read * F32 + read * F64 + at_model * F64)
        if request.mode in ("continue", "infill"):  # written at the (first) clip's channels
            out_ch = max(model_ch, clip.channels)
            if request.include_prompt:
                clip_out = math.ceil(clip.frames * plan.out_rate / clip.sample_rate)
    out_samples = plan.out_samples + clip_out
    decoded = decode_frames(request, plan, eng) * eng.hop  # a loop's or a fill's context too
    codec_work = decoded * eng.codec_bytes_per_sample()  # one variation and channel at a time
    audio_out = variations * model_ch * decoded * F32 * 2  # the codec's tensor and its numpy copy
    kept = variations * out_ch * out_samples * F32
    stages["kept"] = kept * (2 if request.stream else 1)  # streaming keeps the chunks and joins them
    resample = model_ch * (model_samples * F64 + math.ceil(model_samples * plan.out_rate / eng.sample_rate) * F64)
    copies = out_ch * out_samples * (4 * F32 + (3 * F64 if request.normalize == "lufs" else 0))
    if clip_out and clip is not None:
        copies += clip.channels * (clip.frames * F64 + clip_out * F64)
    stages["post-process"] = resample + copies
    tokens = eng.cache_bytes(*cache_shape(request, plan, eng), max(1, text_tokens))
    device_bytes = 0
    if eng.works_on_host:
        stages["tokens"] = tokens
        stages["decode"] = codec_work + audio_out
    else:  # the cache and the codec's work are in the GPU's memory, one after the other
        device_bytes = max(tokens, codec_work)
        stages["decode"] = audio_out
    after_tokens = stages["decode"] + stages["kept"] + stages["post-process"]
    peak = stages.get("read", 0) + max(stages.get("tokens", 0), after_tokens)
    samples = variations * out_ch * out_samples
    seconds = out_samples / plan.out_rate
    shape = (f"{seconds:.0f} s x {plan.out_rate} Hz x {out_ch} channel{'s' if out_ch != 1 else ''} x "
             f"{variations} variation{'s' if variations != 1 else ''}")
    return Cost(samples=samples, stages=stages, peak_bytes=peak, shape=shape, device_bytes=device_bytes)


def check_cost(cost: Cost, limits: Limits) -> None:
    """BadArgs, naming the limit and what to ask instead, when ``cost`` is over ``limits``."""
    instead = ("ask for fewer variations, a shorter length or a lower sample_rate (48000 is what a DAW uses), "
               "or make it in parts, continuing the last")
    fewer_rows = ("ask for fewer variations (a loop or a fill: fewer candidates), or run a smaller model: the cache "
                  "holds one window (about 30 s) at most, so a shorter length helps only below that")
    if cost.samples > limits.max_samples:
        raise BadArgs(f"this job would write {cost.samples:,} samples ({cost.shape}), over the bridge's limit of "
                      f"{limits.max_samples:,} samples a job: {instead}")
    if cost.peak_bytes > limits.max_bytes:
        heaviest = max(cost.stages, key=lambda k: cost.stages[k])
        raise BadArgs(f"this job would hold about {_size(cost.peak_bytes)} of memory at its peak ({cost.shape}; "
                      f"{heaviest}: {_size(cost.stages[heaviest])}), over the bridge's limit of "
                      f"{_size(limits.max_bytes)} a job (serve --max-job-memory): "
                      f"{fewer_rows if heaviest == 'tokens' else instead}")
    if limits.max_device_bytes is not None and cost.device_bytes > limits.max_device_bytes:
        raise BadArgs(f"this job would take about {_size(cost.device_bytes)} of GPU memory at its peak (the "
                      f"decoder's cache, then the codec at work; {cost.shape}), over the "
                      f"{_size(limits.max_device_bytes)} the GPU had free after the model was loaded: ask for fewer "
                      "variations (a loop or a fill: fewer candidates) or a shorter length, or run a smaller model")


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"
