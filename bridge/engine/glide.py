"""A jam's glide: from one text conditioning (and guidance, temperature) to another over some bars.

MusicGen's cross-attention projects the text's hidden states to keys and values with linear maps
without bias, so moving the hidden states along a straight line moves every layer's cross-attention
keys and values along the same line: :meth:`Glide.at` gives the conditioning for a frame of the
timeline, and the jam hands it to the decoder every few steps (``bridge.engine.jam``), which
re-projects the keys and values it keeps. Texts of different lengths are padded with masked zeros;
between the ends the mask is the union of the two (the ends themselves are exactly the two texts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bridge.engine.decoding import Conditioning


def _padded(cond: Conditioning, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, mask = cond.encoder_hidden_states, cond.encoder_attention_mask
    if hidden is None or mask is None:
        raise ValueError("a glide needs text conditioning (cross-attention), not a melody prefix")
    pad = length - hidden.shape[1]
    if pad > 0:
        hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad))
    return hidden, mask


@dataclass
class Glide:
    """From ``start`` (conditioning, guidance, temperature) at frame ``first`` to ``end`` at frame ``last``."""

    start: Conditioning
    end: Conditioning
    end_text: tuple[str, str]  # (text, negative prompt)
    guidance: tuple[float, float]
    temperature: tuple[float, float]
    first: int
    last: int

    def fraction(self, frame: int) -> float:
        if self.last <= self.first:
            return 1.0
        return min(1.0, max(0.0, (frame - self.first) / (self.last - self.first)))

    def at(self, frame: int) -> tuple[Conditioning, float, float, float]:
        """The conditioning, guidance and temperature for ``frame``, and the conditioning's distance from
        the end's (relative to the start's: 1 at the start, 0 at the end)."""
        a = self.fraction(frame)
        g = self.guidance[0] + a * (self.guidance[1] - self.guidance[0])
        t = self.temperature[0] + a * (self.temperature[1] - self.temperature[0])
        if a >= 1.0:
            return self.end, g, t, 0.0
        length = max(self._length(self.start), self._length(self.end))
        h0, m0 = _padded(self.start, length)
        h1, m1 = _padded(self.end, length)
        hidden = torch.lerp(h0, h1.to(h0.dtype), a)
        mask = m0 if a <= 0.0 else torch.maximum(m0, m1)
        span = float(torch.linalg.vector_norm((h1 - h0).float()))
        distance = float(torch.linalg.vector_norm((h1 - hidden).float())) / span if span > 0 else 0.0
        return Conditioning(encoder_hidden_states=hidden, encoder_attention_mask=mask), g, t, distance

    @staticmethod
    def _length(cond: Conditioning) -> int:
        hidden = cond.encoder_hidden_states
        if hidden is None:
            raise ValueError("a glide needs text conditioning (cross-attention), not a melody prefix")
        return int(hidden.shape[1])
