"""The engine: owns the loaded model and turns text, prompt audio and melody into audio codes and back.

No threads, no sockets, no files: callers (``bridge.app.rendering``, ``bridge.app.jam``) give it
arrays and get arrays. Lengths past the model's ~30 s window are reached by sliding a window over
the tokens, keeping the tail of what was generated as the next window's prompt (audiocraft's
``extend_stride``), never re-encoding audio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bridge.engine.decoding import Conditioning, Sampling, TokenLoop
from bridge.engine.fast_decoder import FastDecoder
from bridge.engine.models import LoadedModel
from bridge.errors import BadArgs

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]
FramesFn = Callable[[torch.Tensor, int], None]
"""Called with (all codes so far (B, K, N), frames complete) as generation advances."""

DEFAULT_EXTEND_STRIDE_SECONDS = 18.0  # as audiocraft: 30 s windows, 12 s of kept context


@dataclass(frozen=True)
class GenerationSpec:
    """One call to the engine: what to condition on, how many frames, how to sample."""

    prompt: str
    frames: int
    variations: int = 1
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    prompt_codes: torch.Tensor | None = None  # (1, K, T0) codes of the audio prompt
    chroma: torch.Tensor | None = None  # (1, T_chroma, 12) one-hot melody chroma, melody models only
    negative: str = ""  # guidance pushes away from this text instead of the empty one


def decoder_cache_bytes(layers: int, hidden: int, element_size: int, rows: int, positions: int) -> int:
    """Bytes of a decoder's keys and values: every layer, ``rows`` sequences, ``positions`` each."""
    return 2 * layers * hidden * element_size * rows * positions


CODEC_OUTPUT_FLOATS = 32  # per sample: the decoded audio's copies (the codec's, float, numpy)


class Engine:
    """Keeps one MusicGen model warm and generates with it. Not thread-safe: one worker owns it."""

    def __init__(self, loaded: LoadedModel, window_frames: int | None = None,
                 extend_stride_seconds: float = DEFAULT_EXTEND_STRIDE_SECONDS) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.window_frames = min(window_frames or loaded.max_frames, loaded.max_frames)
        stride = round(extend_stride_seconds * loaded.frame_rate)
        self.stride_frames = max(1, min(stride, self.window_frames - 1))
        self.loop = TokenLoop(self.model.decoder, loaded.num_codebooks, loaded.channels, loaded.pad_token_id,
                              fast=FastDecoder(self.model.decoder, loaded.precision))
        # measured now, before any worker decodes: the hooks it sets would hear another thread's decode too
        self._codec_bytes = 4 * (2 * self._codec_floats_per_sample() + CODEC_OUTPUT_FLOATS)

    # -- facts ------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.loaded.sample_rate

    @property
    def hop(self) -> int:
        return self.loaded.hop_length

    @property
    def channels(self) -> int:
        return self.loaded.channels

    @property
    def frame_rate(self) -> float:
        return float(self.loaded.frame_rate)

    @property
    def works_on_host(self) -> bool:
        """Whether the decoder's cache and the codec's work live in the machine's memory (the CPU), not a GPU's."""
        return self.loaded.device.type == "cpu"

    def cache_bytes(self, rows: int, frames: int, text_tokens: int) -> int:
        """Bytes the decoder's caches hold for ``rows`` sequences of a window of ``frames`` frames.

        The keys and values of every layer for every position (the frames, the delay pattern's tail and
        start token, and a melody model's prefix: its chroma and the text) and, for a text model, the
        text's projected keys and values; at the dtype the decoder computes in.
        """
        cfg = self.model.decoder.config
        fast = self.loop.fast
        dtype = fast.compute_dtype if fast is not None else self.loaded.dtype
        positions = min(frames, self.window_frames) + self.loop.max_delay + 1
        if self.loaded.is_melody:
            positions += int(self.model.config.chroma_length) + text_tokens
            text_tokens = 0
        return decoder_cache_bytes(int(cfg.num_hidden_layers), int(cfg.hidden_size), dtype.itemsize, rows,
                                   positions + text_tokens)

    def codec_bytes_per_sample(self) -> int:
        """Bytes the codec holds while it decodes, per output sample of one variation and channel.

        Measured once on the codec itself, when the engine is made: every layer's input and output while it
        runs (and a residual block's input, kept for its shortcut), at their largest, found with forward hooks
        on a 16-frame decode; doubled for the padded copy a convolution makes of its input and its workspace, plus 32
        floats for the output's copies. On an Intel Xeon that came to 1.3x the resident memory a decode
        really took with the 32 kHz EnCodec (1,664 against 1,290 bytes a sample), 1.1-1.4x with tiny-random's.
        """
        return self._codec_bytes

    def _codec_floats_per_sample(self) -> int:
        from transformers.models.encodec.modeling_encodec import EncodecResnetBlock  # noqa: PLC0415

        codec = self.model.audio_encoder
        peak, held = [0], []

        def size(x: Any) -> int:
            if isinstance(x, torch.Tensor):
                return x.numel()
            return sum(size(t) for t in x) if isinstance(x, (tuple, list)) else 0

        def before(module: torch.nn.Module, inputs: Any) -> None:
            if isinstance(module, EncodecResnetBlock):
                held.append(size(inputs))

        def after(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(module, EncodecResnetBlock):
                held.pop()
            if not any(True for _ in module.children()):
                peak[0] = max(peak[0], size(inputs) + size(output) + sum(held))

        hooks = []
        for name, module in codec.decoder.named_modules():
            if "parametrizations" not in name:  # weight norm's weights: not activations
                hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        frames = 16
        try:
            with torch.inference_mode():
                codes = torch.zeros((1, 1, self.loaded.num_codebooks // self.channels, frames), dtype=torch.long,
                                    device=self.loaded.device)
                samples = codec.decode(codes, audio_scales=[None]).audio_values.shape[-1]
        finally:
            for hook in hooks:
                hook.remove()
        return math.ceil(peak[0] / samples)

    def text_tokens(self, *texts: str) -> int:
        """The most tokens the text encoder reads of any of ``texts`` (at least 1)."""
        limit = self.loaded.max_text_tokens
        counts = [self.loaded.tokenizer.count(t) for t in texts if t.strip()]
        most = max(counts, default=1)
        return min(most, limit) if limit is not None else most

    def free_device_memory(self) -> int | None:
        """Bytes a CUDA device can still give this process (free, and what torch holds unused); None elsewhere."""
        device = self.loaded.device
        if device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) + int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))

    def frames_for_samples(self, samples: int) -> int:
        """Frames whose decoded audio covers at least ``samples`` samples."""
        return max(1, math.ceil(samples / self.hop))

    def windows(self, frames: int, prompt_frames: int) -> list[tuple[int, int]]:
        """(context start, window end) in frames for each window; the first has no extra context."""
        spans = [(0, min(frames, self.window_frames))]
        end = spans[0][1]
        context = self.window_frames - self.stride_frames
        while end < frames:
            new_end = min(frames, end + self.stride_frames)
            spans.append((end - context, new_end))
            end = new_end
        del prompt_frames
        return spans

    def total_steps(self, frames: int, prompt_frames: int) -> int:
        steps = 0
        for i, (start, end) in enumerate(self.windows(frames, prompt_frames)):
            given = prompt_frames if i == 0 else (self.window_frames - self.stride_frames)
            given = min(given, end - start - 1)
            steps += self.loop.steps_for(end - start, given)
        return steps

    # -- conditioning -------------------------------------------------------------------------
    @torch.inference_mode()
    def condition(self, prompt: str, batch: int, sampling: Sampling, chroma: torch.Tensor | None,
                  negative: str = "") -> Conditioning:
        """Encode the text (and melody) once for the whole generation, guidance rows included.

        With guidance and a ``negative`` text, the unconditional rows hold that text's encoding instead
        of the empty text's (a negative prompt: guidance pushes away from it).
        """
        model = self.model
        device, dtype = self.loaded.device, self.loaded.dtype
        guided = sampling.uses_guidance
        if guided and negative.strip():
            return self._condition_with_negative(prompt, negative, batch, chroma)
        if prompt.strip():
            ids, mask = self.loaded.tokenizer([prompt] * batch)
            ids, mask = ids.to(device), mask.to(device)
            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            hidden = torch.zeros((batch, 1, model.config.text_encoder.hidden_size), device=device, dtype=dtype)
            mask = torch.zeros((batch, 1), dtype=torch.long, device=device)
        if hasattr(model, "enc_to_dec_proj") and (
            model.config.text_encoder.hidden_size != model.config.decoder.hidden_size
        ):
            hidden = model.enc_to_dec_proj(hidden)
        if guided:
            hidden = torch.cat([hidden, torch.zeros_like(hidden)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        hidden = hidden * mask[..., None].to(hidden.dtype)
        if not self.loaded.is_melody:
            return Conditioning(encoder_hidden_states=hidden, encoder_attention_mask=mask)
        return Conditioning(prefix=torch.cat([self._melody_states(chroma, batch, guided), hidden], dim=1))

    def _condition_with_negative(self, prompt: str, negative: str, batch: int,
                                 chroma: torch.Tensor | None) -> Conditioning:
        """The guided conditioning with ``negative``'s encoding in the unconditional rows.

        Both texts go through the encoder in one padded batch; an empty prompt keeps the usual null
        row (all masked), and the melody (melody models) stays on the conditional rows only.
        """
        model = self.model
        ids, mask = self.loaded.tokenizer([prompt] * batch + [negative] * batch)
        ids, mask = ids.to(self.loaded.device), mask.to(self.loaded.device)
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if not prompt.strip():
            mask = mask.clone()
            mask[:batch] = 0
        if hasattr(model, "enc_to_dec_proj") and (
            model.config.text_encoder.hidden_size != model.config.decoder.hidden_size
        ):
            hidden = model.enc_to_dec_proj(hidden)
        hidden = hidden * mask[..., None].to(hidden.dtype)
        if not self.loaded.is_melody:
            return Conditioning(encoder_hidden_states=hidden, encoder_attention_mask=mask)
        return Conditioning(prefix=torch.cat([self._melody_states(chroma, batch, True), hidden], dim=1))

    def check_text(self, text: str, what: str) -> None:
        """BadArgs when ``text`` is longer than the text encoder takes (before any generation)."""
        limit = self.loaded.max_text_tokens
        if limit is not None and text.strip():
            count = self.loaded.tokenizer.count(text)
            if count > limit:
                raise BadArgs(f"the {what} is {count} tokens long and the text encoder takes at most {limit}: "
                              "shorten it")

    def _melody_states(self, chroma: torch.Tensor | None, batch: int, guided: bool) -> torch.Tensor:
        model = self.model
        cfg = model.config
        device, dtype = self.loaded.device, self.loaded.dtype
        null = torch.zeros((batch, 1, cfg.num_chroma), device=device, dtype=dtype)
        null[:, :, 0] = 1
        states = null if chroma is None else chroma.to(device=device, dtype=dtype).expand(batch, -1, -1)
        if guided:
            null_like = torch.zeros_like(states)
            null_like[:, :, 0] = 1
            states = torch.cat([states, null_like], dim=0)
        if cfg.num_chroma != cfg.decoder.hidden_size:
            states = model.audio_enc_to_dec_proj(states)
        if states.shape[1] < cfg.chroma_length:
            states = states.repeat(1, math.ceil(cfg.chroma_length / states.shape[1]), 1)
        return states[:, : cfg.chroma_length]

    # -- codec --------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Codes (1, K, T) of ``wave`` (channels, samples) at the model rate, T = samples / hop."""
        codec = self.model.audio_encoder
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(self.loaded.device)
        if self.channels == 2:
            left = codec.encode(x[None, :1]).audio_codes[0]
            right = codec.encode(x[None, 1:2]).audio_codes[0]
            codes = torch.empty((1, left.shape[1] * 2, left.shape[2]), dtype=torch.long, device=x.device)
            codes[:, ::2], codes[:, 1::2] = left, right
            return codes
        return codec.encode(x[None, :1]).audio_codes[0]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Audio (B, channels, frames * hop) float32 from codes (B, K, frames).

        One variation (and one channel) at a time: the codec's activations, far larger than the audio
        (``codec_bytes_per_sample``), are held for one, not for every variation at once. The samples
        differ from a batched decode's by float rounding only (about 1e-7).
        """
        first = self._decode_one(codes[:1])
        out = np.empty((codes.shape[0], *first.shape[1:]), dtype=np.float32)
        out[0] = first[0]
        for i in range(1, codes.shape[0]):
            out[i] = self._decode_one(codes[i:i + 1])[0]
        return out

    def _decode_one(self, codes: torch.Tensor) -> np.ndarray:
        """(1, channels, samples) from one variation's codes (1, K, frames); a stereo model's codebooks alternate."""
        codec = self.model.audio_encoder
        halves = [codes[None, :, ::2], codes[None, :, 1::2]] if self.channels == 2 else [codes[None]]
        return np.concatenate([codec.decode(h, audio_scales=[None]).audio_values.float().cpu().numpy()
                               for h in halves], axis=1)

    def melody_chroma(self, wave: np.ndarray, frames: int) -> torch.Tensor:
        """One-hot chroma (1, T, 12) of a mono mixdown, as transformers' melody feature extractor makes it,
        looped to cover ``frames`` audio frames (so melodies shorter than the piece repeat)."""
        if not self.loaded.is_melody:
            raise BadArgs(
                f"model {self.loaded.name} cannot follow a melody: start the bridge with a melody checkpoint "
                "(--model facebook/musicgen-melody, or tiny-random-melody for a test)"
            )
        from transformers.audio_utils import chroma_filter_bank  # noqa: PLC0415

        n_fft, hop = 16384, 4096
        mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=0), dtype=np.float32))
        if mono.shape[-1] < n_fft:
            pad = n_fft - mono.shape[-1]
            mono = torch.nn.functional.pad(mono, (pad // 2, pad - pad // 2))
        window = torch.hann_window(n_fft)
        spec = torch.stft(mono, n_fft=n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)
        filters = torch.from_numpy(chroma_filter_bank(sampling_rate=self.sample_rate, num_frequency_bins=n_fft,
                                                      tuning=0, num_chroma=12)).float()
        raw = filters @ spec  # (12, T)
        chroma = torch.zeros_like(raw.T)
        chroma.scatter_(1, raw.T.argmax(dim=1, keepdim=True), 1.0)
        needed = math.ceil(frames / self.loaded.frame_rate * self.sample_rate / hop) + 1
        if chroma.shape[0] < needed:
            chroma = chroma.repeat(math.ceil(needed / chroma.shape[0]), 1)
        return chroma[None]

    # -- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_codes(
        self,
        spec: GenerationSpec,
        progress: ProgressFn | None = None,
        is_cancelled: CancelFn | None = None,
        on_frames: FramesFn | None = None,
    ) -> torch.Tensor:
        """Codes (variations, K, spec.frames); the first frames equal ``spec.prompt_codes`` when given."""
        batch = spec.variations
        device = self.loaded.device
        k_books = self.loaded.num_codebooks
        prompt_frames = 0 if spec.prompt_codes is None else int(spec.prompt_codes.shape[-1])
        if prompt_frames >= self.window_frames:
            raise BadArgs("the audio prompt is longer than the model's window: use a shorter prompt_seconds")
        codes = torch.full((batch, k_books, spec.frames), self.loaded.pad_token_id, dtype=torch.long, device=device)
        if spec.prompt_codes is not None:
            codes[:, :, :prompt_frames] = spec.prompt_codes.to(device)
        generator = torch.Generator(device=device)
        generator.manual_seed(spec.seed)
        total = max(1, self.total_steps(spec.frames, prompt_frames))
        done = 0
        chroma_rate = self.sample_rate / 4096 / self.loaded.frame_rate  # chroma frames per audio frame
        cond_text: Conditioning | None = None
        for i, (start, end) in enumerate(self.windows(spec.frames, prompt_frames)):
            given = prompt_frames if i == 0 else min(self.window_frames - self.stride_frames, end - start - 1)
            prompt = codes[:, :, start : start + given] if given > 0 else None
            if self.loaded.is_melody or cond_text is None:
                chroma = None
                if spec.chroma is not None:
                    first = int(start * chroma_rate)
                    chroma = spec.chroma[:, first:]
                cond_text = self.condition(spec.prompt, batch, spec.sampling, chroma, spec.negative)
            base = done

            def on_step(complete: int, steps: int, start: int = start, base: int = base) -> None:
                if progress is not None:
                    progress(min(1.0, (base + steps) / total))
                if on_frames is not None:
                    on_frames(codes, start + complete)

            window = self.loop.run(cond_text, batch, end - start, spec.sampling, generator, prompt=prompt,
                                   on_step=None if progress is None and on_frames is None else on_step,
                                   is_cancelled=is_cancelled,
                                   frames_out=None if on_frames is None else codes[:, :, start:end])
            codes[:, :, start + given : end] = window[:, :, given:]
            if on_frames is not None:
                on_frames(codes, end)
            done += self.loop.steps_for(end - start, given)
        return codes
