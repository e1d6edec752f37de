"""Apple's MPS limit simulated on the CPU: a convolution that refuses outputs longer than a limit, and
the codec computing in pieces under it with the same audio and codes as a whole decode/encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bridge.engine import Engine
from bridge.engine.codec_pieces import limit_convs, piecewise_conv1d, piecewise_conv_transpose1d
from bridge.engine.models import load_model, pick_dtype, pick_precision

LIMIT = 4096  # small, so a 1 s clip needs many pieces (MPS's is 65,536)


class Refused(RuntimeError):
    pass


@pytest.fixture
def refusing_convs(monkeypatch):
    """conv1d and conv_transpose1d that fail, as MPS does, on an output longer than LIMIT samples."""
    real_conv, real_transpose = F.conv1d, F.conv_transpose1d
    longest: list[int] = [0]

    def checked(out: torch.Tensor) -> torch.Tensor:
        longest[0] = max(longest[0], out.shape[-1])
        if out.shape[-1] > LIMIT:
            raise Refused(f"Output channels > 65536 not supported at the MPS device ({out.shape[-1]} > {LIMIT})")
        return out

    monkeypatch.setattr(F, "conv1d", lambda *a, **k: checked(real_conv(*a, **k)))
    monkeypatch.setattr(F, "conv_transpose1d", lambda *a, **k: checked(real_transpose(*a, **k)))
    return longest


@pytest.mark.parametrize(("kernel", "stride", "dilation", "length"), [(7, 1, 1, 10000), (3, 1, 3, 9001),
                                                                      (16, 8, 1, 40000), (4, 2, 1, 8193)])
def test_a_convolution_in_pieces_equals_the_whole_one(refusing_convs, kernel, stride, dilation, length):
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 5, kernel, stride, dilation=dilation)
    x = torch.randn(2, 3, length)
    with torch.no_grad():
        expected = torch.ops.aten.convolution(x, conv.weight, conv.bias, [stride], [0], [dilation], False, [0], 1)
        got = piecewise_conv1d(conv, x, LIMIT)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert 0 < refusing_convs[0] <= LIMIT


@pytest.mark.parametrize(("kernel", "stride", "length"), [(16, 8, 2000), (10, 5, 1700), (8, 4, 3000), (3, 1, 9000)])
def test_a_transposed_convolution_in_pieces_equals_the_whole_one(refusing_convs, kernel, stride, length):
    torch.manual_seed(1)
    conv = nn.ConvTranspose1d(4, 3, kernel, stride)
    x = torch.randn(1, 4, length)
    with torch.no_grad():
        expected = torch.ops.aten.convolution(x, conv.weight, conv.bias, [stride], [0], [1], True, [0], 1)
        got = piecewise_conv_transpose1d(conv, x, LIMIT)
    assert got.shape == expected.shape == (1, 3, (length - 1) * stride + kernel)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert 0 < refusing_convs[0] <= LIMIT


@pytest.fixture(scope="module")
def engines():
    """Two tiny-random engines with the same weights: one whole, one whose codec computes in pieces."""
    whole = Engine(load_model("tiny-random", precision="fp32"))
    pieces = Engine(load_model("tiny-random", precision="fp32"))
    changed = limit_convs(pieces.model.audio_encoder, LIMIT)
    assert changed > 10
    return whole, pieces


def test_the_codec_decodes_in_pieces_to_the_same_audio_at_the_exact_length(engines, refusing_convs):
    whole, pieces = engines
    codes = torch.randint(0, 2048, (2, whole.loaded.num_codebooks, 80))  # 2.56 s: 81,920 samples
    with pytest.raises(Refused):
        whole.decode(codes)  # the simulation bites: the whole decode is refused
    refusing_convs[0] = 0
    got = pieces.decode(codes)
    assert refusing_convs[0] <= LIMIT
    assert got.shape == (2, 1, 80 * whole.hop)
    expected = _unrefused(whole.decode, codes)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_the_codec_encodes_a_long_prompt_in_pieces_to_the_same_codes(engines, refusing_convs):
    whole, pieces = engines
    t = np.arange(int(2.5 * whole.sample_rate)) / whole.sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 331.0 * t))[None].astype(np.float32)
    got = pieces.encode_audio(wave)
    expected = _unrefused(whole.encode_audio, wave)
    assert got.shape == expected.shape == (1, whole.loaded.num_codebooks, wave.shape[-1] // whole.hop)
    assert torch.equal(got, expected)


def _unrefused(call, arg):  # type: ignore[no-untyped-def]
    """``call(arg)`` with the real convolutions (the refusing ones put back afterwards)."""
    refusing = F.conv1d, F.conv_transpose1d
    F.conv1d, F.conv_transpose1d = torch.conv1d, torch.conv_transpose1d
    try:
        return call(arg)
    finally:
        F.conv1d, F.conv_transpose1d = refusing


def test_mps_defaults_to_half_precision_for_the_decoder_and_text_encoder():
    mps = torch.device("mps")
    assert pick_dtype(mps) == torch.float16 and pick_precision(mps) == "fp16"
    assert pick_dtype(mps, "fp32") == torch.float32  # still a choice
    assert pick_dtype(torch.device("cpu")) == torch.float32


def test_a_bad_limit_is_refused():
    with pytest.raises(ValueError, match="positive"):
        limit_convs(nn.Conv1d(1, 1, 3), 0)
