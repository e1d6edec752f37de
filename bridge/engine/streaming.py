"""Chunked EnCodec decoding: audio while the tokens are still being generated.

Each chunk is decoded from its own frames plus a fixed left context and a few frames of lookahead,
so every chunk costs the same however long the piece is. With the defaults the joined chunks match
the one-shot decode to float precision (about 1e-7; ``tests/test_streaming.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bridge.engine.engine import Engine

DEFAULT_CHUNK_FRAMES = 25  # 0.5 s at 50 Hz
DEFAULT_LEFT_CONTEXT = 25
DEFAULT_LOOKAHEAD = 4  # EnCodec's non-causal convolutions look a few frames ahead


@dataclass(frozen=True)
class DecodedChunk:
    """Audio at the model rate for frames [start, end), shape (B, channels, (end - start) * hop)."""

    index: int
    start: int
    end: int
    audio: np.ndarray
    #: the decoded region with its context, and where the chunk's own audio sits in it
    context_audio: np.ndarray
    offset: int


class StreamingDecoder:
    """Turns growing codes into fixed-size decoded chunks, in order, each decoded exactly once."""

    def __init__(self, engine: Engine, start_frame: int, total_frames: int,
                 chunk_frames: int = DEFAULT_CHUNK_FRAMES, left_context: int = DEFAULT_LEFT_CONTEXT,
                 lookahead: int = DEFAULT_LOOKAHEAD) -> None:
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be at least 1")
        self.engine = engine
        self.next_start = start_frame
        self.total = total_frames
        self.chunk_frames = chunk_frames
        self.left_context = left_context
        self.lookahead = lookahead
        self.index = 0

    @property
    def finished(self) -> bool:
        return self.next_start >= self.total

    def feed(self, codes: torch.Tensor, complete: int) -> list[DecodedChunk]:
        """Every chunk that can be decoded now that the first ``complete`` frames of ``codes`` are final."""
        chunks = []
        while not self.finished:
            end = min(self.total, self.next_start + self.chunk_frames)
            needed = min(self.total, end + self.lookahead)
            if complete < needed:
                break
            chunks.append(self._decode(codes, self.next_start, end, complete))
            self.next_start = end
        return chunks

    def _decode(self, codes: torch.Tensor, start: int, end: int, complete: int) -> DecodedChunk:
        hop = self.engine.hop
        first = max(0, start - self.left_context)
        last = min(complete, end + self.lookahead)
        region = self.engine.decode(codes[:, :, first:last])
        offset = (start - first) * hop
        audio = region[..., offset : offset + (end - start) * hop]
        chunk = DecodedChunk(index=self.index, start=start, end=end, audio=audio, context_audio=region,
                             offset=offset)
        self.index += 1
        return chunk
