"""The token loop: MusicGen's delay pattern, classifier-free guidance and sampling, one step at a time.

transformers' ``generate`` hands audio codes back only at the end (its streamer sees the prompt
once), so the project owns this loop: it is the one place where tokens are produced, for files,
streaming and the jam alike. It runs the model's own decoder weights, so with greedy decoding in
fp32 its tokens equal ``generate``'s (tests check this on tiny-random and on the small architecture).

What turns the tokens of one step into the next logits is a *stepper*: :class:`FastStepper` runs
:class:`bridge.engine.fast_decoder.FastDecoder` (preallocated cache, packed weights, the text's keys and
values projected once), :class:`ReferenceStepper` calls transformers' own decoder module with a
``DynamicCache`` and is kept as the reference the fast one is tested against (a :class:`TokenLoop`
built without a fast decoder runs it).

Layout of the delay pattern (mono, K codebooks): sequence position ``p`` of codebook ``k`` holds
audio frame ``p - 1 - k``; position 0 is the start token, and positions outside a codebook's
frames hold the pad token. Stereo checkpoints interleave left/right codebooks, which share a delay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from bridge.engine.cuda_graphs import LogitGuard, device_errors
from bridge.engine.fast_decoder import DecoderState, FastDecoder
from bridge.errors import Cancelled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from the model's logits."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    guidance: float = 3.0
    greedy: bool = False

    @property
    def uses_guidance(self) -> bool:
        return self.guidance > 1.0


@dataclass
class Conditioning:
    """What the decoder is conditioned on, already encoded, for the whole (guided) batch.

    Cross-attention checkpoints use ``encoder_hidden_states``/``encoder_attention_mask``; melody
    checkpoints take ``prefix``, embeddings placed before the audio tokens. With guidance the
    conditional rows come first and the unconditional ones second, as in transformers.
    """

    encoder_hidden_states: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None
    prefix: torch.Tensor | None = None


StepCallback = Callable[[int, int], None]
"""Called after every decoding step with (frames complete so far, steps done in this call)."""


class Stepper(Protocol):
    """Runs decoder positions for one generation; called with (rows, K, T) tokens, returns (rows, K, V)
    float logits for the last of them. The first call holds the prompt, later ones one position."""

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def set_conditioning(self, cond: Conditioning) -> None:
        """Attend to ``cond`` from the next call on, keeping the positions already cached."""


class ReferenceStepper:
    """transformers' decoder module with a ``DynamicCache``: exactly what ``generate`` runs."""

    def __init__(self, decoder: torch.nn.Module, cond: Conditioning, num_codebooks: int) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: PLC0415

        self.decoder = decoder
        self.cond = cond
        self.num_codebooks = num_codebooks
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.first = True

    def set_conditioning(self, cond: Conditioning) -> None:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: PLC0415

        if cond.prefix is not None or self.cond.prefix is not None:
            raise ValueError("a prefix (melody) is part of the sequence: re-prompt to change it")
        self.cond = cond
        # an empty cross-attention cache: transformers projects the new text at the next call
        self.cache = EncoderDecoderCache(self.cache.self_attention_cache, DynamicCache())

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = input_ids.shape[0]
        kwargs: dict[str, object] = {"cache": self.cache, "use_cache": True}
        if self.cond.prefix is not None:
            if self.first:
                kwargs["encoder_hidden_states"] = self.cond.prefix
        else:
            kwargs["encoder_hidden_states"] = self.cond.encoder_hidden_states
            kwargs["encoder_attention_mask"] = self.cond.encoder_attention_mask
        self.first = False
        out = self.decoder(input_ids=input_ids.reshape(rows * self.num_codebooks, -1), **kwargs)
        return out.logits[:, -1, :].float().reshape(rows, self.num_codebooks, -1)


class FastStepper:
    """:class:`FastDecoder` with a cache sized for this generation; single positions replay a CUDA
    graph on CUDA devices (``bridge/engine/cuda_graphs.py``: kept per shape, re-pointed at a new text)."""

    def __init__(self, fast: FastDecoder, cond: Conditioning, rows: int, capacity: int,
                 use_graph: bool = False) -> None:
        self.fast = fast
        self.prefix = cond.prefix
        self.has_prefix = cond.prefix is not None
        if cond.prefix is not None:
            capacity += int(cond.prefix.shape[1])
        self.graph = fast.graphs.lease(self, rows, capacity, cond.encoder_hidden_states,
                                       cond.encoder_attention_mask) if use_graph else None
        self.state: DecoderState = self.graph.state if self.graph is not None else fast.start(
            rows, capacity, cond.encoder_hidden_states, cond.encoder_attention_mask)
        self.guard = LogitGuard(deferred=fast.device.type == "cuda")

    def set_conditioning(self, cond: Conditioning) -> None:
        if cond.prefix is not None or self.has_prefix:
            raise ValueError("a prefix (melody) is part of the sequence: re-prompt to change it")
        if self.graph is not None and self.graph.fits(cond.encoder_hidden_states):
            self.graph.set_conditioning(cond.encoder_hidden_states, cond.encoder_attention_mask)
            return
        self.graph = None  # a text longer than the graph's buffers: eager from here, on the same cache
        self.fast.set_conditioning(self.state, cond.encoder_hidden_states, cond.encoder_attention_mask)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        with device_errors():
            if self.graph is not None and self.state.length > 0 and input_ids.shape[-1] == 1:
                logits = self.graph(input_ids[:, :, 0], self.state.length)
                if logits is not None:
                    self.state.length += 1
                    return self.guard(logits)
                self.graph = None  # graphs are off for this process (a capture failed): eager
            prefix, self.prefix = self.prefix, None
            return self.guard(self.fast.forward(self.state, input_ids, prefix=prefix))

    def finish(self) -> None:
        """The end of a call's steps: a bad logit the deferred guard has not yet reported stops the job now."""
        self.guard.check()


def codebook_delays(num_codebooks: int, channels: int) -> list[int]:
    """The delay of each codebook in the pattern (stereo pairs share one)."""
    if channels == 2:
        return [k // 2 for k in range(num_codebooks)]
    return list(range(num_codebooks))


class TokenLoop:
    """Runs the decoder step by step over the delay pattern.

    ``decoder`` is the checkpoint's ``MusicgenForCausalLM`` (or the melody variant); ``fast``, when
    given, is the same decoder prepared by :class:`FastDecoder` and does the work (the engine's loop).
    A loop built without ``fast`` runs ``decoder`` itself (:class:`ReferenceStepper`): the reference
    the tests hold the fast one to. The loop holds no state between calls: :meth:`run` builds its own
    :class:`TokenStream`, and a caller that continues (the jam) keeps one from :meth:`stream`.
    """

    def __init__(self, decoder: torch.nn.Module, num_codebooks: int, channels: int, pad_token_id: int,
                 fast: FastDecoder | None = None, cuda_graphs: bool = True) -> None:
        self.decoder = decoder
        self.fast = fast
        self.cuda_graphs = cuda_graphs
        self.num_codebooks = num_codebooks
        self.channels = channels
        self.pad = pad_token_id
        self.delays = codebook_delays(num_codebooks, channels)
        self.max_delay = max(self.delays)

    def steps_for(self, frames: int, prompt_frames: int) -> int:
        """Decoder calls needed to produce ``frames`` frames after ``prompt_frames`` given ones."""
        return frames - prompt_frames + self.max_delay

    def stepper(self, cond: Conditioning, rows: int, capacity: int) -> Stepper:
        """The stepper for one generation of ``rows`` sequences of up to ``capacity`` positions."""
        if self.fast is None:
            return ReferenceStepper(self.decoder, cond, self.num_codebooks)
        use_graph = self.cuda_graphs and self.fast.graphs.enabled
        return FastStepper(self.fast, cond, rows, capacity, use_graph=use_graph)

    def stream(self, cond: Conditioning, batch: int, capacity: int, guided: bool,
               prompt: torch.Tensor | None = None, frames: int | None = None) -> TokenStream:
        """A :class:`TokenStream` of up to ``capacity`` frames; see there."""
        return TokenStream(self, cond, batch, capacity, guided, prompt=prompt, frames=frames)

    @torch.inference_mode()
    def run(
        self,
        cond: Conditioning,
        batch: int,
        frames: int,
        sampling: Sampling,
        generator: torch.Generator | None,
        prompt: torch.Tensor | None = None,
        on_step: StepCallback | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        frames_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate codes of shape ``(batch, K, frames)``; the first frames are ``prompt`` (B, K, T0)."""
        if prompt is not None and int(prompt.shape[-1]) >= frames:
            raise ValueError("the prompt is as long as the asked length: nothing to generate")
        stream = self.stream(cond, batch, frames, sampling.uses_guidance, prompt=prompt, frames=frames)
        stream.advance(frames, sampling, generator, on_step=on_step, is_cancelled=is_cancelled,
                       frames_out=frames_out)
        return stream.codes[:, :, :frames]


class TokenStream:
    """One window of the token loop, kept between calls so a caller can continue it (the jam).

    It holds the delayed token sequence, the stepper's cache and the position reached: each
    :meth:`advance` samples on from there, so continuing costs only the new steps, and the sampling
    (temperature, top-k, guidance) may change between calls. Frames complete in every codebook are
    undelayed into :attr:`codes` as they finish; :attr:`complete` counts them (prompt frames
    included). ``capacity`` is the most frames the window holds; ``frames``, when given, is the
    piece's final length, after which every codebook is padded (as in a one-shot generation), so a
    stream without it only differs from a one-shot one in the tail the one-shot pads.

    ``guided`` runs the unconditional rows too (the conditioning must hold them, conditional rows
    first). A guided stream can sample with guidance 1 (it then uses the conditional rows' logits and
    keeps the others up to date), so guidance can come back later without re-reading the context.
    """

    def __init__(self, loop: TokenLoop, cond: Conditioning, batch: int, capacity: int, guided: bool,
                 prompt: torch.Tensor | None = None, frames: int | None = None) -> None:
        k_books = loop.num_codebooks
        device = next(loop.decoder.parameters()).device
        self.loop = loop
        self.batch = batch
        self.guided = guided
        self.prompt_frames = 0 if prompt is None else int(prompt.shape[-1])
        self.capacity = capacity if frames is None else min(capacity, frames)
        if self.prompt_frames >= self.capacity:
            raise ValueError("the prompt fills the window: nothing to generate")
        self.length = self.capacity + loop.max_delay + 1  # start token, the frames, the delay tail
        self.delays = torch.tensor(loop.delays, device=device)
        positions = torch.arange(self.length, device=device)
        frame_of = positions[None, :] - 1 - self.delays[:, None]  # (K, L): frame held at each position
        in_range = (frame_of >= 0) & (frame_of < self.capacity)
        # forced[b, k, p] = token that must stand at p regardless of sampling (-1 = free)
        self.forced = torch.full((batch, k_books, self.length), -1, dtype=torch.long, device=device)
        self.forced[:, ~in_range] = loop.pad
        self.codes = torch.full((batch, k_books, self.capacity), loop.pad, dtype=torch.long, device=device)
        if prompt is not None:
            is_prompt = in_range & (frame_of < self.prompt_frames)
            idx = frame_of.clamp(min=0, max=max(self.prompt_frames - 1, 0))
            gathered = prompt.to(device).gather(2, idx[None].expand(batch, -1, -1))
            self.forced = torch.where(is_prompt[None], gathered, self.forced)
            self.codes[:, :, : self.prompt_frames] = prompt.to(device)
        self.seq = self.forced.clone()
        self.seq[:, :, 0] = loop.pad  # start token (transformers uses the pad id for it)
        self.books = torch.arange(k_books, device=device)
        rows = 2 * batch if guided else batch
        self.step = loop.stepper(cond, rows, self.length)
        self.pos = self.prompt_frames + 1  # the next position to sample
        self.fed = 0  # positions the decoder has seen
        self.steps = 0

    @property
    def complete(self) -> int:
        """Frames complete in every codebook (the prompt's included)."""
        return max(self.prompt_frames, min(self.capacity, self.pos - 1 - self.loop.max_delay))

    @property
    def full(self) -> bool:
        """Whether every position of the window is sampled."""
        return self.pos >= self.length

    def set_conditioning(self, cond: Conditioning) -> None:
        """Condition the steps from here on ``cond`` (same rows), keeping the cache of what came before."""
        self.step.set_conditioning(cond)

    @torch.inference_mode()
    def advance(self, until: int, sampling: Sampling, generator: torch.Generator | None,
                on_step: StepCallback | None = None, is_cancelled: Callable[[], bool] | None = None,
                frames_out: torch.Tensor | None = None) -> int:
        """Sample until ``until`` frames are complete or the window is full; returns :attr:`complete`.

        ``frames_out`` (B, K, capacity), when given, also receives each frame as it completes.
        """
        if sampling.uses_guidance and not self.guided:
            raise ValueError("this stream runs no unconditional rows: it cannot sample with guidance")
        max_delay = self.loop.max_delay
        seq = self.seq
        while self.pos < self.length and self.complete < until:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled while generating")
            step_input = seq[:, :, self.fed : self.pos]
            if self.guided:
                step_input = step_input.repeat(2, 1, 1)
            logits = self.step(step_input)
            self.fed = self.pos
            if self.guided and not sampling.uses_guidance:
                logits = logits[: self.batch]
            tokens = pick_tokens(logits, self.batch, sampling, generator)
            pos = self.pos
            column = self.forced[:, :, pos]
            seq[:, :, pos] = torch.where(column >= 0, column, tokens)
            self.pos = pos + 1
            self.steps += 1
            frame = pos - 1 - max_delay  # the frame this step completed in every codebook
            if 0 <= frame < self.capacity:
                # undelay it now, so streaming can decode it before the window ends
                self.codes[:, :, frame] = seq[:, self.books, frame + 1 + self.delays]
                if frames_out is not None:
                    frames_out[:, :, frame] = self.codes[:, :, frame]
            if on_step is not None:
                on_step(min(self.capacity, max(0, frame + 1)), self.steps)
        if isinstance(self.step, FastStepper):
            self.step.finish()  # a bad logit the GPU's deferred check has not reported yet
        return self.complete


def guided_logits(logits: torch.Tensor, batch: int, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + guidance * (cond - uncond)``, conditional rows first.

    The unconditional rows are the empty text's, or a negative prompt's (``Engine.condition``).
    """
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + (cond - uncond) * guidance


def pick_tokens(logits: torch.Tensor, batch: int, sampling: Sampling, generator: torch.Generator | None
                ) -> torch.Tensor:
    """Guidance, temperature, top-k, top-p, then a draw (or argmax); (rows, K, V) -> (batch, K)."""
    if sampling.uses_guidance:
        logits = guided_logits(logits, batch, sampling.guidance)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < sampling.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - sampling.top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    probs = logits.softmax(dim=-1).reshape(-1, vocab)
    drawn = torch.multinomial(probs, 1, generator=generator)
    return drawn.reshape(logits.shape[:-1])
