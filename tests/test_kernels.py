"""The native int8 kernel (bridge/kernels): it builds here, computes what the float maths computes,
refuses what it cannot do, and a decoder on it stays close to fp32. This process loads the build for
the best instruction set of the CPU; one test runs the whole module again in a child process on the
AVX2 build. Where the CPU has neither, the kernel tests skip and the fallback tests still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridge.engine import kernels
from bridge.engine.fast_decoder import FastDecoder, PackedLinear

CAN_RUN = kernels.pick_isa(kernels.cpu_flags()) is not None
needs_kernel = pytest.mark.skipif(not CAN_RUN, reason="this CPU has neither AVX-512 VNNI nor AVX2")
ISA_NAMES = {"avx512": "AVX-512 VNNI", "avx2": "AVX2"}


@pytest.fixture(scope="module")
def kernel() -> kernels.KernelStatus:
    status = kernels.load_int8_kernel()
    # a machine that can run it must build it: a missing compiler is a setup bug, not a skip
    assert status.available, status.reason
    wanted = os.environ.get("MUSICGEN_BRIDGE_KERNELS", "auto")
    isa = kernels.pick_isa(kernels.cpu_flags(), wanted)
    assert isa is not None and status.reason == f"native int8 kernel ({ISA_NAMES[isa]})"
    return status


@pytest.fixture(scope="module")
def avx2_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The AVX2 build, made once for this module in a folder of its own (where it was not before)."""
    folder = tmp_path_factory.mktemp("avx2-kernel")
    built = kernels.build_int8_kernel(folder, "avx2")
    assert built.parent == folder and list(folder.glob("*.so")) == [built]
    return built


def _quantized(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scales = torch.rand(n, generator=gen) * 0.01 + 0.001
    return q, scales


def test_pack_and_unpack_are_inverse():
    q, _ = _quantized(12, 192)
    packed = kernels.pack_int8_weight(q)
    assert packed.shape == q.shape and not torch.equal(packed, q)
    # block 0 starts with 64 inputs of output 0, then 64 of output 1
    assert torch.equal(packed[0, :64], q[0, :64]) and torch.equal(packed[0, 64:128], q[1, :64])
    assert torch.equal(kernels.unpack_int8_weight(packed), q)


@pytest.mark.parametrize(("n", "k", "fits"), [(3072, 1024, True), (32, 128, True), (32, 32, False),
                                              (30, 128, False), (8, 32768, False)])
def test_which_shapes_fit(n, k, fits):
    assert kernels.fits_int8_kernel(n, k) is fits


@needs_kernel
def test_exact_on_integer_inputs(kernel):
    """Inputs that are already 15-bit integers (largest 16383) quantize to themselves: exact sums."""
    q, scales = _quantized(64, 4096, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-16383, 16384, (3, 4096), generator=gen).float()
    x[:, 0] = 16383.0
    got = torch.ops.musicgen_bridge.int8_linear(x, kernels.pack_int8_weight(q), scales)
    exact = (x.double() @ q.double().T) * scales.double()
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16])
def test_matches_the_float_maths(kernel, dtype, rows):
    q, scales = _quantized(3072, 1024)
    x = torch.randn(rows, 1, 1024, generator=torch.Generator().manual_seed(rows)).to(dtype)
    x[:, :, 5] = 40.0  # an outlier sets the row's scale; the rest still comes out close
    got = torch.ops.musicgen_bridge.int8_linear(x, kernels.pack_int8_weight(q), scales)
    want = x.double() @ (q.double() * scales.double()[:, None]).T
    assert got.shape == (rows, 1, 3072) and got.dtype == torch.float32
    error = float((got.double() - want).norm() / want.norm())
    assert error < 1e-3
    if dtype == torch.float32:  # finer than rounding the activations to bf16 (torch's int8 kernel)
        bf16 = x.bfloat16().double() @ (q.double() * scales.double()[:, None]).T
        assert error < 0.5 * float((bf16 - want).norm() / want.norm())


@needs_kernel
def test_zero_rows_give_zero(kernel):
    q, scales = _quantized(8, 64)
    got = torch.ops.musicgen_bridge.int8_linear(torch.zeros(2, 64), kernels.pack_int8_weight(q), scales)
    assert torch.equal(got, torch.zeros(2, 8))


@needs_kernel
@pytest.mark.parametrize(("x", "match"), [
    (torch.zeros(17, 64), "at most 16 rows"),
    (torch.zeros(2, 64, dtype=torch.float16), "float32 or bfloat16"),
    (torch.zeros(2, 128), "last dimension"),
])
def test_refuses_what_it_cannot_do(kernel, x, match):
    q, scales = _quantized(8, 64)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.musicgen_bridge.int8_linear(x, kernels.pack_int8_weight(q), scales)


@needs_kernel
def test_refuses_an_unpacked_shape(kernel):
    with pytest.raises(RuntimeError, match="multiple of 64"):
        torch.ops.musicgen_bridge.int8_linear(torch.zeros(1, 32), torch.zeros(8, 32, dtype=torch.int8),
                                              torch.ones(8))


@needs_kernel
def test_packed_linear_native_matches_torch_kernel(kernel):
    """Same quantized weights, two kernels: close; the native one is the closer to fp32 (finer
    activations), and more rows than it takes go through the dequantizing path."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(256, 512, generator=gen) * 0.05
    native = PackedLinear(weight, "int8", torch.device("cpu"), native=True)
    fallback = PackedLinear(weight, "int8", torch.device("cpu"), native=False)
    assert native.kind == "int8-native" and fallback.kind == "int8"
    x = torch.randn(40, 512, generator=gen)
    exact = x @ weight.T
    few = torch.cat([native(x[i : i + 2]) for i in range(0, 40, 2)])
    many = native(x)  # 40 rows: dequantized to bf16, one GEMM
    assert many.dtype == torch.float32
    assert float((many - few).norm() / few.norm()) < 0.005  # bf16 rounding of the prompt's rows
    error_native = float((few - exact).norm() / exact.norm())
    error_torch = float((fallback(x[:16]).float() - exact[:16]).norm() / exact[:16].norm())
    assert error_native < 0.01 and error_native < error_torch


def _decoder_lm(hidden: int = 64) -> torch.nn.Module:
    """A two-layer MusicGen decoder whose every linear layer fits the kernel (64 channels)."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                   ffn_dim=hidden * 4, num_codebooks=4, max_position_embeddings=128,
                                   pad_token_id=64, bos_token_id=64)
    config.decoder_start_token_id = 64  # not among the constructor's declared arguments (transformers 5)
    with torch.random.fork_rng():  # fixed weights, without touching the other tests' generator
        torch.manual_seed(0)
        return MusicgenForCausalLM(config).eval()


def _logits(fast: FastDecoder, positions: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    encoder = torch.randn(2, 5, fast.hidden, generator=gen)
    state = fast.start(2, positions, encoder, torch.ones(2, 5, dtype=torch.long))
    out = []
    with torch.inference_mode():
        for _ in range(positions):
            tokens = torch.randint(0, fast.vocab, (2, fast.num_codebooks, 1), generator=gen)
            out.append(fast.forward(state, tokens))
    return torch.stack(out)


@needs_kernel
def test_decoder_on_the_native_kernel_stays_close_to_fp32(kernel):
    lm = _decoder_lm()
    native = FastDecoder(lm, "int8")
    assert native.kernel.available
    kinds = {lin.kind for layer in native.layers for lin in (*layer.qkv, layer.out_self, layer.fc1, layer.fc2)}
    assert kinds == {"int8-native"}
    assert native.describe() == kernel.reason
    want = _logits(FastDecoder(lm, "fp32"))
    got = _logits(native)
    torch_kernel = _logits(FastDecoder(lm, "int8", native_kernels=False))
    assert {lin.kind for layer in FastDecoder(lm, "int8", native_kernels=False).layers for lin in layer.qkv} == {"int8"}
    error = float((got - want).norm() / want.norm())
    assert 0 < error < 0.02
    assert error <= float((torch_kernel - want).norm() / want.norm())
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) > 0.9


def _status_in_a_child(setting: str) -> str:
    """load_int8_kernel's answer in a fresh process (this one may have loaded the kernel already)."""
    code = ("from bridge.engine import kernels; s = kernels.load_int8_kernel(); "
            "print(s.available, kernels.int8_kernel_loaded(), s.reason)")
    env = {**os.environ, "MUSICGEN_BRIDGE_KERNELS": setting}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_switched_off_by_the_environment():
    out = _status_in_a_child("off")
    assert out.startswith("False False") and "MUSICGEN_BRIDGE_KERNELS" in out


def test_a_wrong_setting_says_what_is_accepted():
    out = _status_in_a_child("sse9")
    assert out.startswith("False False") and "auto, avx512, avx2, off" in out


def test_instruction_set_choice():
    avx512 = set(kernels.ISAS["avx512"][0])
    assert kernels.pick_isa(avx512 | {"avx2"}) == "avx512"
    assert kernels.pick_isa(avx512 | {"avx2"}, "avx2") == "avx2"
    assert kernels.pick_isa({"avx2", "fma"}) == "avx2"
    assert kernels.pick_isa({"avx2", "fma"}, "avx512") is None
    assert kernels.pick_isa({"sse4_2"}) is None


@needs_kernel
@pytest.mark.skipif(os.environ.get("MUSICGEN_BRIDGE_KERNELS") == "avx2", reason="already the AVX2 child")
@pytest.mark.skipif(kernels.pick_isa(kernels.cpu_flags(), "avx2") is None, reason="this CPU lacks AVX2")
def test_the_avx2_build_passes_this_module(avx2_build: Path):
    """Most desktop CPUs (AMD Zen 1-3, Intel's consumer chips) get the AVX2 build: run every test here
    on it, in a child process, since one process holds one build of the ops (the build made here)."""
    stamp = avx2_build.stat().st_mtime_ns
    env = {**os.environ, "MUSICGEN_BRIDGE_KERNELS": "avx2", "MUSICGEN_BRIDGE_KERNEL_DIR": str(avx2_build.parent)}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                           env=env, capture_output=True, text=True, check=False, timeout=600)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and " failed" not in child.stdout
    # the child loaded the build from its folder as it was: no second build beside it, none made anew
    assert list(avx2_build.parent.glob("int8_linear-avx2-*.so")) == [avx2_build]
    assert avx2_build.stat().st_mtime_ns == stamp


def test_a_failing_compiler_is_reported(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CXX", "false")  # exists everywhere, always fails
    with pytest.raises(RuntimeError, match="false failed"):
        kernels.build_int8_kernel(tmp_path)
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left behind
    assert not list(tmp_path.glob(".building-*"))


def test_no_compiler_is_reported(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        kernels.build_int8_kernel(tmp_path)


@needs_kernel
@pytest.mark.skipif(os.environ.get("MUSICGEN_BRIDGE_KERNELS") == "avx2", reason="the parent checks the build")
def test_built_once_then_reused(kernel, avx2_build: Path):
    stamp = avx2_build.stat().st_mtime_ns
    again = kernels.build_int8_kernel(avx2_build.parent, "avx2")
    assert again == avx2_build and again.stat().st_mtime_ns == stamp
    assert avx2_build.name.startswith("int8_linear-avx2-") and avx2_build.suffix == ".so"


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_fused_gelu_and_residual_match_separate_ops(kernel, rows):
    q, scales = _quantized(100, 128, seed=5)  # 100 outputs: the epilogue's masked tail is used
    packed = kernels.pack_int8_weight(q)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(rows, 1, 128, generator=gen) * 30  # outputs from about -60 to 60
    residual = torch.randn(rows, 1, 100, generator=gen)
    plain = torch.ops.musicgen_bridge.int8_linear(x, packed, scales)
    assert float(plain.abs().max()) > 10
    torch.testing.assert_close(torch.ops.musicgen_bridge.int8_linear(x, packed, scales, 1),
                               torch.nn.functional.gelu(plain), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.ops.musicgen_bridge.int8_linear(x, packed, scales, 0, residual),
                               plain + residual, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.ops.musicgen_bridge.int8_linear(x, packed, scales, 1, residual),
                               torch.nn.functional.gelu(plain) + residual, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_fused_gelu_over_its_whole_range(kernel):
    """An identity weight passes values through: the kernel's GELU against torch's, -30 to 30."""
    values = torch.linspace(-30, 30, 2048)
    eye = torch.eye(64, dtype=torch.int8) * 127
    scales = torch.full((64,), 1 / 127)
    for chunk in values.split(64):
        got = torch.ops.musicgen_bridge.int8_linear(chunk[None], kernels.pack_int8_weight(eye), scales, 1)[0]
        through = torch.ops.musicgen_bridge.int8_linear(chunk[None], kernels.pack_int8_weight(eye), scales)[0]
        torch.testing.assert_close(got, torch.nn.functional.gelu(through), rtol=2e-6, atol=2e-6)


@needs_kernel
def test_refuses_a_bad_residual_or_activation(kernel):
    q, scales = _quantized(8, 64)
    packed = kernels.pack_int8_weight(q)
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.musicgen_bridge.int8_linear(torch.zeros(2, 64), packed, scales, 0, torch.zeros(3, 8))
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.musicgen_bridge.int8_linear(torch.zeros(2, 64), packed, scales, 7)


@needs_kernel
@pytest.mark.parametrize("with_text", [True, False])
def test_one_native_call_per_step_equals_the_python_layers(kernel, with_text):
    """All layers in one native call compute what the per-layer Python path computes, to the bit."""
    fast = FastDecoder(_decoder_lm(), "int8")
    assert fast.native_step
    gen = torch.Generator().manual_seed(7)
    encoder = torch.randn(2, 5, fast.hidden, generator=gen) if with_text else None
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]) if with_text else None
    steps = [torch.randint(0, fast.vocab, (2, fast.num_codebooks, 1), generator=gen) for _ in range(10)]
    runs = []
    for native in (True, False):
        state = fast.start(2, 10, encoder, mask)
        assert (state.native_params is not None) is True
        if not native:
            state.native_params = None  # the per-layer path
        with torch.inference_mode():
            runs.append(torch.stack([fast.forward(state, tokens) for tokens in steps]))
        assert state.length == 10
    assert torch.equal(runs[0], runs[1])


@needs_kernel
def test_native_step_refuses_a_full_cache(kernel):
    fast = FastDecoder(_decoder_lm(), "int8")
    state = fast.start(2, 1, None, None)
    assert state.native_params is not None
    with torch.inference_mode():
        fast.forward(state, torch.zeros(2, 4, 1, dtype=torch.long))
        with pytest.raises(ValueError, match="holds 1 positions"):
            fast.forward(state, torch.zeros(2, 4, 1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="cache is full"):
            torch.ops.musicgen_bridge.decoder_layers(torch.zeros(2, 1, 64), state.native_params, 1, False, None,
                                                     fast.heads, fast.norm_eps)


@needs_kernel
def test_nan_and_inf_inputs_give_nan_as_the_float_maths_does(kernel):
    q, scales = _quantized(8, 64)
    x = torch.ones(3, 64)
    x[0, 10] = float("nan")
    x[1, 3] = float("inf")
    got = torch.ops.musicgen_bridge.int8_linear(x, kernels.pack_int8_weight(q), scales)
    assert bool(got[0].isnan().all()) and bool(got[1].isnan().all()) and bool(got[2].isfinite().all())


@needs_kernel
def test_a_decoder_says_when_only_some_layers_fit(kernel, tiny_engine):
    """tiny-random is 32 wide: only fc2 (128 inputs) fits the kernel, and describe() says so."""
    fast = FastDecoder(tiny_engine.model.decoder, "int8")
    assert not fast.native_step
    assert fast.describe().endswith("for 2 of 12 linear layers (other shapes: torch's)")
    assert FastDecoder(tiny_engine.model.decoder, "int8", native_kernels=False).describe() == (
        "torch's int8 kernel (native kernels not asked for)")


def _attention_reference(q, keys, values, length, mask, causal):
    """float64 maths of ``attention``: (rows, Q, H*d) out, query i of Q seeing ``length - Q + i + 1``
    positions when causal."""
    rows, queries, _ = q.shape
    heads, d = keys.shape[1], keys.shape[3]
    qh = q.double().view(rows, queries, heads, d).transpose(1, 2)  # (rows, H, Q, d)
    scores = qh @ keys[:, :, :length].double().transpose(-1, -2) / d**0.5  # (rows, H, Q, length)
    if mask is not None:
        scores = scores + mask.double().reshape(rows, 1, 1, length)
    if causal:
        visible = torch.arange(length)[None, :] <= torch.arange(length - queries, length)[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
    out = scores.softmax(-1) @ values[:, :, :length].double()
    return out.transpose(1, 2).reshape(rows, queries, heads * d)


def _cache(rows: int, heads: int, capacity: int, d: int, dtype: torch.dtype, gen: torch.Generator):
    keys = torch.randn(rows, heads, capacity, d, generator=gen).to(dtype)
    values = torch.randn(rows, heads, capacity, d, generator=gen).to(dtype)
    return keys, values


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "heads", "d", "queries"), [(2, 16, 64, 1), (1, 3, 16, 1), (3, 2, 32, 3),
                                                              (2, 1, 128, 16)])
def test_attention_matches_float64_at_every_length(kernel, dtype, rows, heads, d, queries):
    """Every length from the queries' count to 70 (the vector loops' tails), causal, on a cache longer
    than what is read (positions past ``length`` must not count)."""
    gen = torch.Generator().manual_seed(rows * 100 + heads + d)
    keys, values = _cache(rows, heads, 80, d, dtype, gen)
    keys[:, :, 70:] = 1e4  # never read: would swamp the softmax if it were
    for length in range(queries, 71):
        q = torch.randn(rows, queries, heads * d, generator=gen) * 2
        got = torch.ops.musicgen_bridge.attention(q, keys, values, length, None, True)
        want = _attention_reference(q, keys, values, length, None, True)
        assert got.dtype == torch.float32 and got.shape == (rows, queries, heads * d)
        error = float((got.double() - want).abs().max())
        assert error < 2e-5, (length, error)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_with_a_text_mask_and_strided_inputs(kernel, dtype):
    """Cross-attention as the decoder calls it: keys and values as head views of (rows, T, H*d), q a slice
    of a wider tensor, an additive mask (one row without any text attends uniformly), no causality."""
    gen = torch.Generator().manual_seed(11)
    rows, heads, d, text = 2, 4, 64, 9
    flat_k = torch.randn(rows, text, heads * d, generator=gen).to(dtype)
    flat_v = torch.randn(rows, text, heads * d, generator=gen).to(dtype)
    flat_v[1] = 0.0
    keys = flat_k.view(rows, text, heads, d).transpose(1, 2)  # not contiguous
    values = flat_v.view(rows, text, heads, d).transpose(1, 2)
    allowed = torch.tensor([[1] * 6 + [0] * 3, [0] * 9], dtype=torch.bool)
    mask = torch.zeros(rows, 1, 1, text, dtype=dtype).masked_fill(~allowed[:, None, None, :], torch.finfo(dtype).min)
    wide = torch.randn(rows, 1, 3 * heads * d, generator=gen)
    q = wide[..., : heads * d]  # strided rows, as the fused q/k/v output's slice
    got = torch.ops.musicgen_bridge.attention(q, keys, values, text, mask, False)
    want = _attention_reference(q, keys, values, text, mask.float(), False)
    assert float((got.double() - want).abs().max()) < 2e-5
    assert float(got[1].abs().max()) == 0.0  # no text: the (zero) values of the text's padding
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.view(rows, 1, heads, d).transpose(1, 2).to(dtype), keys, values, attn_mask=mask)
    torch.testing.assert_close(got, sdpa.transpose(1, 2).reshape(rows, 1, heads * d).float(), rtol=2e-2,
                               atol=2e-2 if dtype == torch.bfloat16 else 1e-5)


@needs_kernel
@pytest.mark.parametrize(("call", "match"), [
    (lambda k, v: (torch.zeros(2, 1, 64), k, v, 11), "fit the cache"),
    (lambda k, v: (torch.zeros(2, 2, 64), k, v, 1), "cover the queries"),
    (lambda k, v: (torch.zeros(2, 1, 64, dtype=torch.bfloat16), k, v, 4), "float32"),
    (lambda k, v: (torch.zeros(2, 1, 64), k.half(), v.half(), 4), "float32 or bfloat16"),
    (lambda k, v: (torch.zeros(2, 1, 64), k, v.bfloat16(), 4), "one dtype"),
    (lambda k, v: (torch.zeros(2, 1, 40), k[..., :10], v[..., :10], 4), "multiple of 16"),
])
def test_attention_refuses_what_it_cannot_do(kernel, call, match):
    keys, values = torch.zeros(2, 4, 10, 16), torch.zeros(2, 4, 10, 16)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.musicgen_bridge.attention(*call(keys, values), None, True)


@needs_kernel
def test_dequantized_weights_are_the_scaled_int8_ones_in_bf16(kernel):
    q, scales = _quantized(12, 192, seed=8)
    got = torch.ops.musicgen_bridge.dequantize_int8(kernels.pack_int8_weight(q), scales)
    assert got.dtype == torch.bfloat16 and got.shape == (12, 192)
    assert torch.equal(got, (q.float() * scales[:, None]).bfloat16())
