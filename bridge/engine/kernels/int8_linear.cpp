// The int8 weight-only linear layer of the fast decoder, for the few rows of one decoding step.
//
//   y[m, n] = act(sum_k x[m, k] * q[n, k] * scale[n]) + residual[m, n]
//
// (act: none or GELU, residual optional: the decoder's fc1 and its residual adds, done while the
// outputs are in cache instead of as separate ops.)
// Weights are int8 with one scale per output channel, as ``PackedLinear`` quantizes them. A decoding
// step multiplies them by 1 to 16 rows (2 with guidance), so the work is reading the weights: the
// kernel is built to stream them at the memory's speed.
//
// - Activations are quantized per row to 15-bit integers (scale = max|x| / 16383), then multiplied
//   as int16 pairs into int32: ``vpdpwssd`` with AVX-512 VNNI, ``vpmaddwd`` + add with AVX2. Relative
//   error ~1e-5 of the row's largest value: far finer than the bf16 activations of torch's
//   ``_weight_int8pack_mm``, and 15 bits keep every int32 accumulator exact for in_features <= 8192.
//   A row holding nan or inf gives nan, as the float maths would.
// - Weights are interleaved in blocks of 4 output channels x 64 input channels (``pack_int8_weight``
//   in __init__.py), so each thread reads one sequential stream; software prefetch into L2 runs
//   ``kPrefetch`` bytes ahead (the hardware prefetcher stops at page boundaries) and covers the
//   stream's first bytes before the loop starts. Measured on this project's 2-core Xeon, the 144
//   matrices of one step of MusicGen small: 20.5 GB/s with L1 prefetch, 25-26 GB/s with L2 prefetch
//   and the prologue (torch's kernel: ~12 GB/s).
// - Output channels are split between threads with ``at::parallel_for`` (torch's own thread pool).
//
// One source, two builds: ``-DMGB_ISA_AVX512`` or ``-DMGB_ISA_AVX2`` picks the micro-kernels below;
// the ops and ``decoder_layers`` are shared. Built at run time by ``bridge/engine/kernels/__init__.py``
// (g++, the flags there), loaded with ``torch.ops.load_library``, called as
// ``torch.ops.musicgen_bridge.int8_linear`` / ``attention`` / ``dequantize_int8`` / ``decoder_layers``;
// ``isa()`` names the build.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kBlockRows = 4;      // output channels interleaved per block
constexpr int64_t kBlockCols = 64;     // input channels per interleaved chunk (one cache line)
constexpr int64_t kMaxRows = 16;       // more rows: the caller dequantizes and uses a GEMM
constexpr int64_t kMaxInFeatures = 8192;  // keeps 15-bit x 8-bit sums inside int32 (AVX2: K/8 per lane)
constexpr int64_t kPrefetch = 16384;   // bytes ahead in the weight stream
constexpr float kActivationMax = 16383.0f;

enum Activation : int64_t { kNone = 0, kGelu = 1 };

#if defined(MGB_ISA_AVX512)

constexpr int64_t kRowGroup = 4;  // activation rows handled per pass over the weights
constexpr const char* kIsaName = "AVX-512 VNNI";

// One pass over blocks [b0, b1) of the packed weight for M activation rows.
template <int M>
void gemv_blocks(const int16_t* x, const float* x_scale, int64_t K, const int8_t* w, const float* w_scale,
                 float* y, int64_t ldy, int64_t b0, int64_t b1) {
  constexpr int kAcc = M == 1 ? 2 : 1;  // one row: two accumulators per channel hide the latency
  for (int64_t b = b0; b < b1; ++b) {
    __m512i acc[kBlockRows][M][kAcc];
    for (auto& per_row : acc)
      for (auto& per_m : per_row)
        for (auto& a : per_m) a = _mm512_setzero_si512();
    const int8_t* wp = w + b * kBlockRows * K;
    if (b == b0) {  // the start of this thread's stream, before the first loads ask for it
      for (int64_t offset = 0; offset < kPrefetch; offset += kBlockCols)
        _mm_prefetch(reinterpret_cast<const char*>(wp + offset), _MM_HINT_T1);
    }
    for (int64_t k = 0; k < K; k += kBlockCols) {
      for (int64_t r = 0; r < kBlockRows; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetch + r * kBlockCols), _MM_HINT_T1);
      for (int half = 0; half < 2; ++half) {
        __m512i xv[M];
        for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_si512(x + m * K + k + half * 32);
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const __m512i wv = _mm512_cvtepi8_epi16(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + r * kBlockCols + half * 32)));
          for (int m = 0; m < M; ++m) {
            __m512i& a = acc[r][m][kAcc == 2 ? half : 0];
            a = _mm512_dpwssd_epi32(a, wv, xv[m]);
          }
        }
      }
      wp += kBlockRows * kBlockCols;
    }
    for (int64_t r = 0; r < kBlockRows; ++r) {
      const int64_t n = b * kBlockRows + r;
      for (int m = 0; m < M; ++m) {
        __m512i a = acc[r][m][0];
        if constexpr (kAcc == 2) a = _mm512_add_epi32(a, acc[r][m][1]);
        y[m * ldy + n] = static_cast<float>(_mm512_reduce_add_epi32(a)) * w_scale[n] * x_scale[m];
      }
    }
  }
}

// 16 floats from fp32 or bf16 memory.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// Row m of x as 15-bit integers and the scale that gives them back.
template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t K, int16_t* xq, float* scales) {
  for (int64_t m = 0; m < rows; ++m) {
    const T* row = x + m * K;
    __m512 peak = _mm512_setzero_ps();
    __mmask16 bad = 0;  // lanes that met a nan (max_ps would drop it)
    for (int64_t k = 0; k < K; k += 16) {
      const __m512 v = load16(row + k);
      bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      peak = _mm512_max_ps(peak, _mm512_abs_ps(v));
    }
    const float amax = _mm512_reduce_max_ps(peak);
    // a zero row stays zero; a row with inf or nan gives nan out, as the float maths would
    const float scale = bad != 0 || amax == std::numeric_limits<float>::infinity() ? std::numeric_limits<float>::quiet_NaN()
                        : amax > 0.0f ? amax / kActivationMax : 1.0f;
    const __m512 inv = _mm512_set1_ps(1.0f / scale);
    for (int64_t k = 0; k < K; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(load16(row + k), inv));  // round to nearest
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + m * K + k), _mm512_cvtsepi32_epi16(q));
    }
    scales[m] = scale;
  }
}

// The float vector and the few operations the shared GELU and epilogue below need.
using Vec = __m512;
constexpr int64_t kLanes = 16;
inline Vec vset(float a) { return _mm512_set1_ps(a); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec vfmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }    // a * b + c
inline Vec vfnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec vabs(Vec a) { return _mm512_abs_ps(a); }
inline Vec vround(Vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT); }
inline Vec vcopysign(Vec magnitude, Vec sign) {  // |magnitude| >= 0 with sign's sign bit
  return _mm512_or_ps(magnitude, _mm512_and_ps(sign, _mm512_castsi512_ps(_mm512_set1_epi32(INT32_MIN))));
}
inline Vec vscale2(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
inline __mmask16 lanes(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }
inline Vec load_part(const float* p, int64_t count) { return _mm512_maskz_loadu_ps(lanes(count), p); }
inline void store_part(float* p, Vec v, int64_t count) { _mm512_mask_storeu_ps(p, lanes(count), v); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload(const at::BFloat16* p) { return load16(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline float vhsum(Vec v) { return _mm512_reduce_add_ps(v); }
inline float vhmax(Vec v) { return _mm512_reduce_max_ps(v); }

#elif defined(MGB_ISA_AVX2)

constexpr int64_t kRowGroup = 2;  // 16 ymm registers: 4 channels x 2 rows of accumulators, plus inputs
constexpr const char* kIsaName = "AVX2";

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// One pass over blocks [b0, b1) of the packed weight for M (1 or 2) activation rows: int8 weights
// widened to int16, ``vpmaddwd`` into int32 (the pre-VNNI form of the same sums).
template <int M>
void gemv_blocks(const int16_t* x, const float* x_scale, int64_t K, const int8_t* w, const float* w_scale,
                 float* y, int64_t ldy, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    __m256i acc[kBlockRows][M];
    for (auto& per_row : acc)
      for (auto& a : per_row) a = _mm256_setzero_si256();
    const int8_t* wp = w + b * kBlockRows * K;
    if (b == b0) {
      for (int64_t offset = 0; offset < kPrefetch; offset += kBlockCols)
        _mm_prefetch(reinterpret_cast<const char*>(wp + offset), _MM_HINT_T1);
    }
    for (int64_t k = 0; k < K; k += kBlockCols) {
      for (int64_t r = 0; r < kBlockRows; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(wp + kPrefetch + r * kBlockCols), _MM_HINT_T1);
      for (int quarter = 0; quarter < 4; ++quarter) {
        __m256i xv[M];
        for (int m = 0; m < M; ++m)
          xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * K + k + quarter * 16));
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const __m256i wv = _mm256_cvtepi8_epi16(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + r * kBlockCols + quarter * 16)));
          for (int m = 0; m < M; ++m) acc[r][m] = _mm256_add_epi32(acc[r][m], _mm256_madd_epi16(wv, xv[m]));
        }
      }
      wp += kBlockRows * kBlockCols;
    }
    for (int64_t r = 0; r < kBlockRows; ++r) {
      const int64_t n = b * kBlockRows + r;
      for (int m = 0; m < M; ++m)
        y[m * ldy + n] = static_cast<float>(hsum(acc[r][m])) * w_scale[n] * x_scale[m];
    }
  }
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline __m256 abs8(__m256 v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t K, int16_t* xq, float* scales) {
  for (int64_t m = 0; m < rows; ++m) {
    const T* row = x + m * K;
    __m256 peak = _mm256_setzero_ps();
    __m256 bad = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
      const __m256 v = load8(row + k);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      peak = _mm256_max_ps(peak, abs8(v));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, peak);
    const float amax = *std::max_element(lanes, lanes + 8);
    const float scale = _mm256_movemask_ps(bad) != 0 || amax == std::numeric_limits<float>::infinity()
                            ? std::numeric_limits<float>::quiet_NaN()
                            : amax > 0.0f ? amax / kActivationMax : 1.0f;
    const __m256 inv = _mm256_set1_ps(1.0f / scale);
    for (int64_t k = 0; k < K; k += 16) {
      const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(load8(row + k), inv));
      const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(load8(row + k + 8), inv));
      // packs works within 128-bit lanes: put the four 64-bit quarters back in order
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + m * K + k), packed);
    }
    scales[m] = scale;
  }
}

using Vec = __m256;
constexpr int64_t kLanes = 8;
inline Vec vset(float a) { return _mm256_set1_ps(a); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec vsub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec vdiv(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec vfmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vfnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec vabs(Vec a) { return abs8(a); }
inline Vec vround(Vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec vcopysign(Vec magnitude, Vec sign) {
  return _mm256_or_ps(magnitude, _mm256_and_ps(sign, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN))));
}
inline Vec vscale2(Vec p, Vec n) {  // p * 2^n through the exponent bits (-126 <= n <= 127)
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
inline __m256i lanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load_part(const float* p, int64_t count) { return _mm256_maskload_ps(p, lanes(count)); }
inline void store_part(float* p, Vec v, int64_t count) { _mm256_maskstore_ps(p, lanes(count), v); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload(const at::BFloat16* p) { return load8(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline float vhsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float vhmax(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

#else
#error "build with -DMGB_ISA_AVX512 or -DMGB_ISA_AVX2 (bridge/engine/kernels/__init__.py does)"
#endif

// ---- shared by both builds, written on the Vec operations above ------------------------------------

// exp(x) for x <= 0 (all GELU needs): 2^n * p(f), p a degree-6 Taylor polynomial on |f| <= ln2/2
inline Vec exp_negative(Vec x) {
  x = vmax(x, vset(-87.0f));
  const Vec n = vround(vmul(x, vset(1.44269504f)));
  const Vec f = vfnmadd(n, vset(0.693147181f), x);
  Vec p = vset(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = vfmadd(p, f, vset(c));
  return vscale2(p, n);
}

// GELU with the exact erf form (transformers' "gelu"): 0.5 x (1 + erf(x / sqrt 2)), erf by
// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
inline Vec gelu(Vec x) {
  const Vec z = vabs(vmul(x, vset(0.707106781f)));
  const Vec t = vdiv(vset(1.0f), vfmadd(z, vset(0.3275911f), vset(1.0f)));
  Vec poly = vset(1.061405429f);
  for (const float c : {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f}) poly = vfmadd(poly, t, vset(c));
  poly = vmul(poly, t);
  const Vec erf_abs = vsub(vset(1.0f), vmul(poly, exp_negative(vsub(vset(0.0f), vmul(z, z)))));
  const Vec erf = vcopysign(erf_abs, x);  // erf is odd
  return vmul(vmul(x, vset(0.5f)), vadd(erf, vset(1.0f)));
}

// y[n0:n1] = act(y[n0:n1]) + residual[n0:n1] for one row, a vector at a time (masked at the end)
void epilogue(float* y, const float* residual, int64_t n0, int64_t n1, int64_t activation) {
  for (int64_t n = n0; n < n1; n += kLanes) {
    const int64_t count = std::min(kLanes, n1 - n);
    Vec v = load_part(y + n, count);
    if (activation == kGelu) v = gelu(v);
    if (residual != nullptr) v = vadd(v, load_part(residual + n, count));
    store_part(y + n, v, count);
  }
}

at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scales,
                       int64_t activation, const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2 && weight.is_contiguous(),
              "int8_linear: the weight must be a contiguous int8 matrix from pack_int8_weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(N % kBlockRows == 0 && K % kBlockCols == 0 && K <= kMaxInFeatures,
              "int8_linear: out_features must be a multiple of 4 and in_features a multiple of 64, at most 8192");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == N && scales.is_contiguous(),
              "int8_linear: scales must be N contiguous floats");
  TORCH_CHECK(input.size(-1) == K, "int8_linear: the input's last dimension must be in_features");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16,
              "int8_linear: the input must be float32 or bfloat16");
  const at::Tensor x = input.reshape({-1, K}).contiguous();
  const int64_t rows = x.size(0);
  TORCH_CHECK(rows <= kMaxRows, "int8_linear: at most 16 rows (dequantize for more)");
  TORCH_CHECK(activation == kNone || activation == kGelu, "int8_linear: activation must be 0 (none) or 1 (gelu)");
  at::Tensor res;
  if (residual.has_value()) {
    res = residual->reshape({-1, N});
    TORCH_CHECK(res.scalar_type() == at::kFloat && res.size(0) == rows && res.is_contiguous(),
                "int8_linear: the residual must be contiguous float32 with the output's shape");
  }
  const float* rp = res.defined() ? res.data_ptr<float>() : nullptr;
  const bool finish = rp != nullptr || activation != kNone;

  std::vector<int16_t> xq(static_cast<size_t>(rows * K));
  std::vector<float> x_scale(static_cast<size_t>(rows));
  if (x.scalar_type() == at::kFloat) {
    quantize_rows(x.data_ptr<float>(), rows, K, xq.data(), x_scale.data());
  } else {
    quantize_rows(x.data_ptr<at::BFloat16>(), rows, K, xq.data(), x_scale.data());
  }

  at::Tensor y = at::empty({rows, N}, x.options().dtype(at::kFloat));
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = N / kBlockRows;
  for (int64_t m0 = 0; m0 < rows; m0 += kRowGroup) {
    const int64_t group = std::min(kRowGroup, rows - m0);
    const int16_t* xg = xq.data() + m0 * K;
    const float* sg = x_scale.data() + m0;
    float* yg = yp + m0 * N;
    at::parallel_for(0, blocks, 8, [&](int64_t b0, int64_t b1) {
      switch (group) {
        case 1: gemv_blocks<1>(xg, sg, K, wp, sp, yg, N, b0, b1); break;
        case 2: gemv_blocks<2>(xg, sg, K, wp, sp, yg, N, b0, b1); break;
#if defined(MGB_ISA_AVX512)
        case 3: gemv_blocks<3>(xg, sg, K, wp, sp, yg, N, b0, b1); break;
        default: gemv_blocks<4>(xg, sg, K, wp, sp, yg, N, b0, b1); break;
#else
        default: break;  // kRowGroup is 2
#endif
      }
      if (finish) {  // on the outputs this thread just wrote, while they are in its cache
        for (int64_t m = 0; m < group; ++m)
          epilogue(yg + m * N, rp == nullptr ? nullptr : rp + (m0 + m) * N, b0 * kBlockRows, b1 * kBlockRows,
                   activation);
      }
    });
  }
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

// ---- many rows: the weights back in bf16 for one GEMM ---------------------------------------------
//
// A prompt (a continuation's clip, a window's context) has hundreds of rows: a GEMM then does the
// work (bf16: AMX where the CPU has it; on a Zen 4 EPYC without AMX the bf16 GEMM already runs at the
// machine's multiply rate, which the int16 sums of the kernel above cannot beat). This undoes the
// interleaving, applies the scales and rounds to bf16 in one pass over the int8 weight, where the
// three torch ops it replaces wrote and read three full-size copies.

at::Tensor dequantize_int8(const at::Tensor& weight, const at::Tensor& scales) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2 && weight.is_contiguous(),
              "dequantize_int8: the weight must be a contiguous int8 matrix from pack_int8_weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(N % kBlockRows == 0 && K % kBlockCols == 0, "dequantize_int8: not a packed shape");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == N && scales.is_contiguous(),
              "dequantize_int8: scales must be N contiguous floats");
  at::Tensor out = at::empty({N, K}, weight.options().dtype(at::kBFloat16));
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, N / kBlockRows, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int8_t* block = wp + b * kBlockRows * K;
      for (int64_t c = 0; c < K; c += kBlockCols) {
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const int64_t n = b * kBlockRows + r;
          const float scale = sp[n];
          const int8_t* src = block + c * kBlockRows + r * kBlockCols;
          at::BFloat16* dst = op + n * K + c;
          for (int64_t j = 0; j < kBlockCols; ++j) dst[j] = at::BFloat16(static_cast<float>(src[j]) * scale);
        }
      }
    }
  });
  return out;
}

// ---- attention of a few queries over the KV cache ------------------------------------------------
//
// out[r, i, h*d:(h+1)*d] = softmax(q[r, i, h] . K[r, h, :n_i] / sqrt(d) + mask[r, :n_i]) V[r, h, :n_i]
//
// One decoding step asks this of every layer: 1 query per row and head over up to ~1500 cached
// positions, so the work is reading the cache once. torch's scaled_dot_product_attention takes ~10x
// the time of that read for a bf16 cache on CPUs without AMX (measured on a Zen 4 EPYC: 1.19 ms a
// layer at 500 positions against 0.115 ms for fp32); here a bf16 cache is widened to fp32 in
// registers (a shift: no bf16 arithmetic, so any AVX2 CPU does it at the memory's speed) and all
// sums are fp32, two passes over the positions (scores, then the weighted values).
// Query i of Q sees the first ``length - Q + i + 1`` positions when ``causal`` (the new positions
// follow the cached ones), all ``length`` otherwise. ``mask`` (rows x length, fp32, finite) is added
// to the scores (the text's padding in cross-attention).

constexpr int64_t kMaxHeadDim = 256;

template <typename T>
void attend_one(const float* q, const T* k, int64_t k_step, const T* v, int64_t v_step, int64_t n, int64_t d,
                const float* mask, float scale, float* scores, float* out) {
  constexpr int64_t kMaxVecs = kMaxHeadDim / kLanes;
  const int64_t vecs = d / kLanes;
  Vec qv[kMaxVecs];
  for (int64_t c = 0; c < vecs; ++c) qv[c] = vmul(vload(q + c * kLanes), vset(scale));
  float peak = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const T* kj = k + j * k_step;
    Vec acc0 = vmul(qv[0], vload(kj));
    Vec acc1 = vset(0.0f);
    for (int64_t c = 1; c + 1 < vecs; c += 2) {
      acc1 = vfmadd(qv[c], vload(kj + c * kLanes), acc1);
      acc0 = vfmadd(qv[c + 1], vload(kj + (c + 1) * kLanes), acc0);
    }
    if (vecs % 2 == 0) acc1 = vfmadd(qv[vecs - 1], vload(kj + (vecs - 1) * kLanes), acc1);
    float s = vhsum(vadd(acc0, acc1));
    if (mask != nullptr) s += mask[j];
    scores[j] = s;
    peak = std::max(peak, s);
  }
  // exp(s - peak) <= 1 for every position, a vector at a time
  Vec total = vset(0.0f);
  const Vec top = vset(peak);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Vec e = exp_negative(vsub(vload(scores + j), top));
    vstore(scores + j, e);
    total = vadd(total, e);
  }
  float sum = vhsum(total);
  if (j < n) {
    const Vec e = exp_negative(vsub(load_part(scores + j, n - j), top));
    store_part(scores + j, e, n - j);
    sum += vhsum(load_part(scores + j, n - j));
  }
  Vec acc[kMaxVecs];
  for (int64_t c = 0; c < vecs; ++c) acc[c] = vset(0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const Vec p = vset(scores[i]);
    const T* vi = v + i * v_step;
    for (int64_t c = 0; c < vecs; ++c) acc[c] = vfmadd(p, vload(vi + c * kLanes), acc[c]);
  }
  const Vec inv = vset(1.0f / sum);
  for (int64_t c = 0; c < vecs; ++c) vstore(out + c * kLanes, vmul(acc[c], inv));
}

template <typename T>
void attention_impl(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t length,
                    const float* mask, bool causal, at::Tensor& out) {
  const int64_t rows = q.size(0), queries = q.size(1), heads = keys.size(1), d = keys.size(3);
  const float* qp = q.data_ptr<float>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  float* op = out.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  at::parallel_for(0, rows * heads * queries, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores(static_cast<size_t>(length));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / (heads * queries), h = (t / queries) % heads, i = t % queries;
      const int64_t n = causal ? length - queries + i + 1 : length;
      attend_one(qp + r * q.stride(0) + i * q.stride(1) + h * d, kp + r * keys.stride(0) + h * keys.stride(1),
                 keys.stride(2), vp + r * values.stride(0) + h * values.stride(1), values.stride(2), n, d,
                 mask == nullptr ? nullptr : mask + r * length, scale, scores.data(),
                 op + (r * queries + i) * heads * d + h * d);
    }
  });
}

// q (rows, Q, heads * d) fp32, its last dimension contiguous; keys and values (rows, heads, capacity, d)
// in fp32 or bf16, any strides but the last; returns (rows, Q, heads * d) fp32.
at::Tensor attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t length,
                     const std::optional<at::Tensor>& mask, bool causal) {
  TORCH_CHECK(keys.dim() == 4 && values.sizes() == keys.sizes() && values.scalar_type() == keys.scalar_type(),
              "attention: keys and values must both be (rows, heads, capacity, head_dim) of one dtype");
  TORCH_CHECK(keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kBFloat16,
              "attention: the cache must be float32 or bfloat16");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1, "attention: head_dim must be contiguous");
  const int64_t rows = keys.size(0), heads = keys.size(1), d = keys.size(3);
  TORCH_CHECK(d % 16 == 0 && d <= kMaxHeadDim, "attention: head_dim must be a multiple of 16, at most 256");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.size(0) == rows && q.size(2) == heads * d &&
                  q.stride(2) == 1,
              "attention: q must be (rows, queries, heads * head_dim) float32 with its last dimension contiguous");
  const int64_t queries = q.size(1);
  TORCH_CHECK(queries >= 1 && length >= queries && length <= keys.size(2),
              "attention: length must cover the queries and fit the cache");
  at::Tensor m;
  if (mask.has_value()) {
    m = mask->to(at::kFloat).reshape({-1, length}).contiguous();
    TORCH_CHECK(m.size(0) == rows, "attention: the mask must hold rows x length values");
  }
  at::Tensor out = at::empty({rows, queries, heads * d}, q.options());
  const float* mp = m.defined() ? m.data_ptr<float>() : nullptr;
  if (keys.scalar_type() == at::kFloat) {
    attention_impl<float>(q, keys, values, length, mp, causal, out);
  } else {
    attention_impl<at::BFloat16>(q, keys, values, length, mp, causal, out);
  }
  return out;
}

// ---- the decoder's layers at one position --------------------------------------------------------
//
// MusicGen's decoder layers for one new position of every row, the same ops as FastDecoder's Python
// ``run_layers`` (pre-norm self-attention over the KV cache, cross-attention on the text, GELU
// MLP, fp32 residual stream, bf16 cache read by ``attention``), called once per step instead of ~30
// Python calls per layer.
// ``params`` holds kLayerParams tensors per layer, in the order of ``FastDecoder.native_params``.

constexpr int64_t kLayerParams = 22;

at::Tensor decoder_layers(const at::Tensor& hidden_in, at::TensorList params, int64_t start, bool cross,
                          const std::optional<at::Tensor>& cross_mask, int64_t heads, double eps) {
  TORCH_CHECK(params.size() % kLayerParams == 0, "decoder_layers: params must hold 22 tensors per layer");
  TORCH_CHECK(hidden_in.dim() == 3 && hidden_in.size(1) == 1 && hidden_in.scalar_type() == at::kFloat,
              "decoder_layers: hidden must be (rows, 1, hidden) float32");
  const int64_t rows = hidden_in.size(0), width = hidden_in.size(2), head_dim = width / heads;
  TORCH_CHECK(head_dim * heads == width, "decoder_layers: hidden size must divide into heads");
  at::Tensor hidden = hidden_in.contiguous();
  const std::vector<int64_t> norm_shape{width};
  // the text's padding as fp32 scores to add, once for all layers
  std::optional<at::Tensor> text_mask;
  if (cross && cross_mask.has_value()) text_mask = cross_mask->to(at::kFloat).reshape({rows, -1}).contiguous();
  for (size_t base = 0; base < params.size(); base += kLayerParams) {
    const at::Tensor* p = params.data() + base;
    const at::Tensor& keys = p[20];
    const at::Tensor& values = p[21];
    TORCH_CHECK(start < keys.size(2), "decoder_layers: the cache is full");
    // self-attention
    at::Tensor x = at::layer_norm(hidden, norm_shape, p[0], p[1], eps);
    const at::Tensor qkv = int8_linear(x, p[2], p[3], kNone, std::nullopt);
    keys.narrow(2, start, 1).copy_(qkv.narrow(-1, width, width).view({rows, 1, heads, head_dim}).transpose(1, 2));
    values.narrow(2, start, 1).copy_(
        qkv.narrow(-1, 2 * width, width).view({rows, 1, heads, head_dim}).transpose(1, 2));
    at::Tensor attn = attention(qkv.narrow(-1, 0, width), keys, values, start + 1, std::nullopt, true);
    hidden = int8_linear(attn, p[4], p[5], kNone, hidden);
    // cross-attention on the text's keys and values
    if (cross) {
      x = at::layer_norm(hidden, norm_shape, p[6], p[7], eps);
      const at::Tensor q = int8_linear(x, p[8], p[9], kNone, std::nullopt);
      attn = attention(q, p[12], p[13], p[12].size(2), text_mask, false);
      hidden = int8_linear(attn, p[10], p[11], kNone, hidden);
    }
    // MLP
    x = at::layer_norm(hidden, norm_shape, p[14], p[15], eps);
    hidden = int8_linear(int8_linear(x, p[16], p[17], kGelu, std::nullopt), p[18], p[19], kNone, hidden);
  }
  return hidden;
}

std::string isa() { return kIsaName; }

}  // namespace

TORCH_LIBRARY(musicgen_bridge, m) {
  m.def("isa() -> str", isa);
  m.def("int8_linear(Tensor input, Tensor weight, Tensor scales, int activation=0, Tensor? residual=None) -> Tensor");
  m.def("dequantize_int8(Tensor weight, Tensor scales) -> Tensor");
  m.def("attention(Tensor q, Tensor keys, Tensor values, int length, Tensor? mask=None, bool causal=True) -> Tensor");
  m.def("decoder_layers(Tensor hidden, Tensor[] params, int start, bool cross, Tensor? cross_mask, int heads, "
        "float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(musicgen_bridge, CPU, m) {
  m.impl("int8_linear", int8_linear);
  m.impl("dequantize_int8", dequantize_int8);
  m.impl("attention", attention);
  m.impl("decoder_layers", decoder_layers);
}
