"""Loops and fills: a bridge chosen by how likely the model finds what must follow it, and circular decoding.

MusicGen only continues, so both are built from continuations. A *bridge* is ``frames`` new frames after
some context; ``candidates`` of them are sampled in one batch, and each is scored by the log-likelihood
the model gives a *head* of known tokens teacher-forced right after it (the loop's own opening, or the
second clip's): the same stream that samples the bridge then reads the head with its tokens forced, so
scoring costs only the head's steps. The likeliest candidate wins.

``circular_decode`` turns a loop's codes into audio whose end runs into its start: the codec decodes
the loop with its own end before it and its own start after it, and the first few milliseconds are
blended from what the codec made right after the loop's end, so the wrap is one of the codec's own
sample-to-sample steps. No threads, no files: the app layer (``bridge.app.loops``) plans and cuts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bridge.engine.decoding import FastStepper, Sampling, TokenStream, guided_logits
from bridge.engine.engine import Engine
from bridge.errors import BadArgs

HEAD_SECONDS = 0.5  # how much of what follows a bridge is scored
WRAP_BLEND_SECONDS = 0.01  # the blend at a loop's start that makes the wrap the codec's own step
DECODE_CONTEXT_SECONDS = 1.0  # what the codec sees on each side of a loop or a fill


@dataclass(frozen=True)
class BridgeChoice:
    """The sampled bridges, their scores (mean log-likelihood per head token, in nats) and the winner."""

    bridges: torch.Tensor  # (candidates, K, frames)
    scores: list[float]
    winner: int
    head_tokens: int  # tokens each score averages over

    @property
    def best(self) -> torch.Tensor:
        """The winning bridge, (1, K, frames)."""
        return self.bridges[self.winner : self.winner + 1]


def head_frames(engine: Engine) -> int:
    """Frames of the head that are scored."""
    return max(1, round(HEAD_SECONDS * engine.frame_rate))


def head_needed(engine: Engine) -> int:
    """Frames of the head to give: the scored ones plus the codebook delay (so every scored token's
    context is real audio, not padding)."""
    return head_frames(engine) + engine.loop.max_delay


class _ScoringStepper:
    """Wraps a stream's stepper: after each call, adds the log-likelihood of the forced head tokens at
    the position being predicted (under the same guidance as sampling) to a per-row total."""

    def __init__(self, stream: TokenStream, head_start: int, scored: int, guidance: float) -> None:
        self.stream = stream
        self.inner = stream.step
        self.head_start = head_start  # the first head frame, in the stream's frames
        self.scored = scored
        self.guidance = guidance
        self.total = torch.zeros(stream.batch, dtype=torch.float64)
        self.count = 0

    def set_conditioning(self, cond: object) -> None:
        self.inner.set_conditioning(cond)  # type: ignore[arg-type]

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.inner(input_ids)
        stream = self.stream
        pos = stream.pos
        frames = pos - 1 - stream.delays  # (K,): the frame each codebook holds at this position
        books = ((frames >= self.head_start) & (frames < self.head_start + self.scored)).nonzero().flatten()
        if books.numel():
            batch = stream.batch
            guided = guided_logits(logits, batch, self.guidance) if self.guidance > 1.0 else logits[:batch]
            logp = torch.log_softmax(guided.float(), dim=-1)[:, books]  # (batch, n, V)
            tokens = stream.forced[:, books, pos]  # (batch, n)
            picked = logp.gather(-1, tokens[..., None].to(logp.device))[..., 0]
            self.total += picked.sum(dim=-1).double().cpu()
            self.count += int(books.numel())
        return logits


@torch.inference_mode()
def sample_bridges(engine: Engine, text: str, negative: str, sampling: Sampling, generator: torch.Generator,
                   context: torch.Tensor, frames: int, head: torch.Tensor, candidates: int,
                   on_step: Callable[[int, int], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None) -> BridgeChoice:
    """``candidates`` bridges of ``frames`` frames after ``context`` (1, K, Tc), in one batch, scored by the
    log-likelihood of ``head`` (1, K, >= head_needed) forced right after each; the likeliest wins."""
    scored = head_frames(engine)
    given = head_needed(engine)
    if head.shape[-1] < given:
        raise BadArgs(f"what follows a bridge must be at least {given} frames long")
    if context.shape[-1] < 1:
        raise BadArgs("a bridge needs audio before it")
    head = head[:, :, :given]
    tc = int(context.shape[-1])
    total = tc + frames + given
    if total > engine.window_frames:
        raise BadArgs(f"a bridge of {frames} frames with its context and head does not fit the model's window "
                      f"of {engine.window_frames} frames: ask for a shorter fill")
    device = engine.loaded.device
    cond = engine.condition(text, candidates, sampling, None, negative)
    stream = engine.loop.stream(cond, candidates, total, sampling.uses_guidance,
                                prompt=context.to(device).expand(candidates, -1, -1), frames=total)
    _share_context(engine, stream, text, negative, sampling, context.to(device), total)
    head_start = tc + frames
    positions = torch.arange(given, device=device)[None, :] + head_start + 1 + stream.delays[:, None]  # (K, H)
    stream.forced.scatter_(2, positions[None].expand(candidates, -1, -1),
                           head.to(device).expand(candidates, -1, -1))
    scorer = _ScoringStepper(stream, head_start, scored, sampling.guidance)
    stream.step = scorer  # type: ignore[assignment]
    stream.advance(head_start + scored, sampling, generator, on_step=on_step, is_cancelled=is_cancelled)
    scores = [float(s) for s in (scorer.total / max(1, scorer.count)).tolist()]
    winner = int(np.argmax(scores))
    return BridgeChoice(bridges=stream.codes[:, :, tc:head_start].clone(), scores=scores, winner=winner,
                        head_tokens=scorer.count)


def _share_context(engine: Engine, stream: TokenStream, text: str, negative: str, sampling: Sampling,
                   context: torch.Tensor, total: int) -> None:
    """Read the context once, not once per candidate: run it through a one-candidate stream and copy its
    keys and values into every candidate's rows of ``stream``, which then starts at the context's last
    position. Only for the fast decoder without a melody prefix; elsewhere ``stream`` reads it itself."""
    step = stream.step
    if stream.batch == 1 or not isinstance(step, FastStepper) or step.has_prefix:
        return
    tc = int(context.shape[-1])
    single = engine.loop.stream(engine.condition(text, 1, sampling, None, negative), 1, total, stream.guided,
                                prompt=context, frames=total)
    first = single.step
    if not isinstance(first, FastStepper):
        return
    ids = single.seq[:, :, :tc]  # the start token and the context, as the stream would feed them
    first(ids.repeat(2, 1, 1) if stream.guided else ids)
    rows = [0] * stream.batch + ([1] * stream.batch if stream.guided else [])
    index = torch.tensor(rows, device=ids.device)
    source, target = first.state, step.state
    for keys, values, src_keys, src_values in zip(target.keys, target.values, source.keys, source.values,
                                                  strict=True):
        keys[:, :, :tc] = src_keys.index_select(0, index)[:, :, :tc]
        values[:, :, :tc] = src_values.index_select(0, index)[:, :, :tc]
    target.length = tc
    stream.fed = tc


def bridge_steps(engine: Engine, frames: int) -> int:
    """Decoder calls :func:`sample_bridges` makes for a bridge of ``frames`` frames (for progress)."""
    return frames + head_frames(engine) + engine.loop.max_delay


def decode_context_frames(frame_rate: float, most: int) -> int:
    """Frames the codec decodes on one side of a loop or a fill for context: ``DECODE_CONTEXT_SECONDS``,
    no more than ``most`` (a loop's own length, a fill's first-clip context)."""
    return min(most, max(1, round(DECODE_CONTEXT_SECONDS * frame_rate)))


def circular_decode(engine: Engine, codes: torch.Tensor) -> np.ndarray:
    """Audio (channels, frames * hop) of the loop ``codes`` (1, K, frames) that repeats without a seam.

    The codec decodes [the loop's end | the loop | the loop's start]; the loop's own span is cut out,
    and its first ``WRAP_BLEND_SECONDS`` are blended from what the codec made right after the loop's
    end, so the last sample runs into the first exactly as two neighbouring samples of one decode do.
    """
    frames = int(codes.shape[-1])
    hop = engine.hop
    context = decode_context_frames(engine.frame_rate, frames)
    extended = torch.cat([codes[:, :, frames - context :], codes, codes[:, :, :context]], dim=-1)
    decoded = engine.decode(extended)[0]
    start, period = context * hop, frames * hop
    loop = decoded[:, start : start + period].copy()
    blend = min(period // 2, max(2, round(WRAP_BLEND_SECONDS * engine.sample_rate)))
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, blend))).astype(np.float32)  # 0 -> 1
    after_end = decoded[:, start + period : start + period + blend]
    loop[:, :blend] = ramp * loop[:, :blend] + (1.0 - ramp) * after_end
    return loop


def fit_period(loop: np.ndarray, samples: int) -> np.ndarray:
    """One period of a periodic signal resampled to ``samples`` samples (FFT: the result stays periodic).

    Both the rate change and the fit of whole frames to whole bars (at most half a frame) happen here.
    """
    if loop.shape[-1] == samples:
        return loop
    from scipy.signal import resample  # noqa: PLC0415

    return np.ascontiguousarray(resample(loop, samples, axis=-1), dtype=np.float32)
