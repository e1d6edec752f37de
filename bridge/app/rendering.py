"""Rendering: a planned job through the engine to finished audio (resampled, cut, faded, normalized).

The engine makes tokens and decodes them; this turns that into exactly the asked samples: the
continuation's prompt audio in, the new audio out after the seam, the clip's channel layout kept,
the user's original clip in front with ``include_prompt``. Streaming writes chunks as they are
decoded (:class:`ChunkWriter`); the final file is exactly the chunks joined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridge import audio
from bridge.app.planning import Plan
from bridge.app.results import Chunk
from bridge.app.storage import storage_error
from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.streaming import StreamingDecoder
from bridge.errors import BridgeError, Cancelled, Internal, ModelError
from bridge.options import Request

SEAM_CROSSFADE_SECONDS = 0.05


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (GPU or CPU allocator), the one RuntimeError a shorter job fixes."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


class Renderer:
    """Runs one planned job on the engine and post-processes what it decodes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def render(self, request: Request, plan: Plan, clip: audio.Clip | None, seed: int,
               progress: Callable[[float], None], is_cancelled: Callable[[], bool],
               writer: ChunkWriter | None = None) -> list[np.ndarray]:
        """One array per variation, exactly ``plan.out_samples`` long (streaming: the chunks joined)."""
        eng = self.engine
        prompt_codes = None
        chroma = None
        if request.mode == "continue" and clip is not None:
            prompt_codes = eng.encode_audio(self.prompt_audio(clip, plan.prompt_frames))
        elif request.mode == "melody" and clip is not None:
            wave = audio.match_channels(audio.resample(clip.data, clip.sample_rate, eng.sample_rate), 1)
            chroma = eng.melody_chroma(wave, plan.frames)
        sampling = Sampling(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                            guidance=request.guidance if plan.text.strip() or chroma is not None
                            or request.negative.strip() else 1.0)
        spec = GenerationSpec(prompt=plan.text, frames=plan.frames, variations=request.variations,
                              sampling=sampling, seed=seed, prompt_codes=prompt_codes, chroma=chroma,
                              negative=request.negative)
        try:
            codes = eng.generate_codes(spec, progress=progress, is_cancelled=is_cancelled,
                                       on_frames=None if writer is None else writer.on_frames)
            if writer is not None:
                return [writer.finish(codes)]
            if is_cancelled():
                raise Cancelled("the job was cancelled before its audio was decoded")
            decoded = eng.decode(codes)
        except BridgeError:
            raise
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise  # a bug, not the user's length: the queue reports it as internal, with the log
            raise ModelError(f"the model ran out of memory while generating ({exc}): try a shorter length or "
                             "fewer variations") from exc
        outputs = []
        for i in range(request.variations):
            if is_cancelled():  # between post-processing stages too, not only between decoding steps
                raise Cancelled("the job was cancelled during post-processing")
            outputs.append(self.finish(decoded[i], plan, request, clip))
        return outputs

    def prompt_audio(self, clip: audio.Clip, frames: int) -> np.ndarray:
        """The clip's last ``frames`` frames' worth of audio at the model rate, channel-matched."""
        eng = self.engine
        clip_samples = Fraction(frames * eng.hop * clip.sample_rate, eng.sample_rate)
        take = min(clip.samples, math.ceil(clip_samples))
        tail = clip.data[:, clip.samples - take :]
        wave = audio.resample(tail, clip.sample_rate, eng.sample_rate)
        wave = audio.match_channels(wave, eng.channels)
        need = frames * eng.hop
        return wave[:, -need:] if wave.shape[1] >= need else audio.fit_length(wave, need)

    def finish(self, decoded: np.ndarray, plan: Plan, request: Request, clip: audio.Clip | None) -> np.ndarray:
        eng = self.engine
        wave = audio.resample(decoded, eng.sample_rate, plan.out_rate)
        new = audio.fit_length(wave[:, plan.seam :], plan.out_samples)
        continuing = request.mode == "continue"
        new = audio.fade_edges(new, plan.out_rate, head=not continuing, tail=True)
        if continuing and clip is not None:
            # a continuation keeps the clip's channel layout, so it sits on the clip's track as is
            new = audio.match_channels(new, max(clip.data.shape[0], eng.channels))
        if continuing and request.include_prompt and clip is not None:
            original = audio.resample(clip.data, clip.sample_rate, plan.out_rate)
            original = audio.match_channels(original, new.shape[0])
            wave = audio.match_channels(wave, new.shape[0])
            overlap = min(int(SEAM_CROSSFADE_SECONDS * plan.out_rate), plan.seam, original.shape[1])
            rerender = wave[:, plan.seam - overlap : plan.seam]
            blended = audio.crossfade_into(original, rerender, overlap)
            new = np.concatenate([blended, new], axis=-1)
        return audio.normalize(new, plan.out_rate, request.normalize)


class ChunkWriter:
    """Streams one job: decodes chunks as frames complete, writes each, and joins them at the end.

    The final file is exactly the chunks joined: both come out of this one path.
    """

    def __init__(self, engine: Engine, request: Request, plan: Plan, clip: audio.Clip | None, folder: Path,
                 on_chunk: Callable[[Chunk], None] | None) -> None:
        self.engine = engine
        self.request = request
        self.plan = plan
        self.on_chunk = on_chunk
        continuing = clip is not None and request.mode == "continue"
        self.channels = max(clip.data.shape[0], engine.channels) if (clip is not None and continuing) else None
        self.decoder = StreamingDecoder(engine, start_frame=plan.prompt_frames, total_frames=plan.frames)
        self.folder = folder
        self.pieces: list[np.ndarray] = []
        self.written = 0

    def _out_pos(self, frame: int) -> int:
        eng = self.engine
        return round(Fraction((frame - self.plan.prompt_frames) * eng.hop * self.plan.out_rate, eng.sample_rate))

    def on_frames(self, codes: Any, complete: int) -> None:
        for chunk in self.decoder.feed(codes, complete):
            self._emit(chunk)

    def _emit(self, chunk: Any) -> None:
        eng = self.engine
        plan = self.plan
        start, end = self._out_pos(chunk.start), min(self._out_pos(chunk.end), plan.out_samples)
        if start >= plan.out_samples or end <= start:
            return
        if plan.out_rate == eng.sample_rate:
            piece = chunk.audio[0][:, : end - start]
        else:
            region = audio.resample(chunk.context_audio[0], eng.sample_rate, plan.out_rate)
            region_start = self._out_pos(chunk.start - chunk.offset // eng.hop)
            piece = audio.fit_length(region[:, start - region_start :], end - start)
        if self.channels is not None:
            piece = audio.match_channels(piece, self.channels)
        head = start == 0 and self.request.mode != "continue"
        tail = end == plan.out_samples
        if head or tail:
            piece = audio.fade_edges(piece, plan.out_rate, head=head, tail=tail)
        piece = audio.soft_limit(piece)
        self.pieces.append(piece)
        path = self.folder / f"{chunk.index:04d}.{self.request.format}"
        try:
            audio.write_atomic(path, piece, plan.out_rate, self.request.format)
        except (OSError, RuntimeError) as exc:  # libsndfile reports a full disk as a RuntimeError
            raise storage_error(exc, path, "write") from exc
        if self.on_chunk is not None:
            self.on_chunk(Chunk(index=chunk.index, path=path, start_seconds=start / plan.out_rate,
                                seconds=(end - start) / plan.out_rate))
        self.written = end

    def finish(self, codes: Any) -> np.ndarray:
        self.on_frames(codes, self.plan.frames)
        if self.written < self.plan.out_samples:
            raise Internal(f"streaming produced {self.written} of {self.plan.out_samples} samples; "
                           "please report this with the job's options")
        return np.concatenate(self.pieces, axis=-1)
