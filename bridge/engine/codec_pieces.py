"""The codec's convolutions computed in pieces along time, for Apple's MPS.

MPS refuses a 1-d convolution whose output is longer than 65,536 samples (about 2 s at 32 kHz), so
decoding a piece, a jam segment or encoding a continuation prompt longer than that would fail there.
:func:`limit_convs` makes every ``Conv1d`` and ``ConvTranspose1d`` of a module compute its output in
pieces of at most ``limit`` samples. A piece reads exactly the inputs its outputs depend on (the
kernel's reach), and a transposed convolution's pieces are overlap-added, so the result is the
whole convolution's to float rounding, at the exact length. Nothing else in the codec changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MPS_CONV_OUTPUT_LIMIT = 65536


def piecewise_conv1d(conv: nn.Conv1d, x: torch.Tensor, limit: int) -> torch.Tensor:
    """``conv(x)`` with at most ``limit`` output samples per call (the module's padding must be 0)."""
    stride, dilation = int(conv.stride[0]), int(conv.dilation[0])
    reach = dilation * (int(conv.kernel_size[0]) - 1) + 1  # inputs one output reads
    total = (x.shape[-1] - reach) // stride + 1
    weight, bias = conv.weight, conv.bias
    if total <= limit:
        return F.conv1d(x, weight, bias, stride, 0, dilation, conv.groups)
    pieces = []
    for first in range(0, total, limit):
        last = min(total, first + limit)  # outputs [first, last)
        part = x[..., first * stride : (last - 1) * stride + reach]
        pieces.append(F.conv1d(part, weight, bias, stride, 0, dilation, conv.groups))
    return torch.cat(pieces, dim=-1)


def piecewise_conv_transpose1d(conv: nn.ConvTranspose1d, x: torch.Tensor, limit: int) -> torch.Tensor:
    """``conv(x)`` with at most ``limit`` output samples per call: input pieces whose outputs overlap by
    ``kernel - stride`` samples, added where they overlap, the bias added once."""
    stride, kernel = int(conv.stride[0]), int(conv.kernel_size[0])
    length = x.shape[-1]
    total = (length - 1) * stride + kernel
    weight, bias = conv.weight, conv.bias
    if total <= limit:
        return F.conv_transpose1d(x, weight, bias, stride, 0, 0, conv.groups, 1)
    per_piece = max(1, (limit - kernel) // stride + 1)  # inputs whose outputs fit the limit
    out = x.new_zeros((*x.shape[:-2], weight.shape[1] * conv.groups, total))
    for first in range(0, length, per_piece):
        last = min(length, first + per_piece)
        piece = F.conv_transpose1d(x[..., first:last], weight, None, stride, 0, 0, conv.groups, 1)
        out[..., first * stride : first * stride + piece.shape[-1]] += piece
    if bias is not None:
        out += bias[:, None]
    return out


def limit_convs(module: nn.Module, limit: int = MPS_CONV_OUTPUT_LIMIT) -> int:
    """Make every 1-d convolution in ``module`` compute in pieces of at most ``limit`` output samples;
    returns how many it changed. Convolutions with padding, or output padding, are left alone."""
    if limit < 1:
        raise ValueError(f"the convolution output limit must be positive, got {limit}")
    changed = 0
    for sub in module.modules():
        if isinstance(sub, nn.ConvTranspose1d):
            if sub.padding[0] == 0 and sub.output_padding[0] == 0 and sub.dilation[0] == 1:
                sub.forward = _bound(piecewise_conv_transpose1d, sub, limit)  # type: ignore[method-assign,assignment]
                changed += 1
        elif isinstance(sub, nn.Conv1d) and sub.padding == (0,) and sub.padding_mode == "zeros":
            sub.forward = _bound(piecewise_conv1d, sub, limit)  # type: ignore[method-assign,assignment]
            changed += 1
    return changed


def _bound(function: Callable[[Any, torch.Tensor, int], torch.Tensor], conv: nn.Module, limit: int
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return function(conv, x, limit)

    return forward
