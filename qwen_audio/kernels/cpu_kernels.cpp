// Weight-streaming CPU kernels for decoding, one build for every instruction set.
//
// Decoding a token is bound by reading the weights once, so these kernels multiply a few input
// rows (M <= 16, float32) by a weight matrix kept in its stored precision (bf16, fp16) or
// quantized (q8, q4), dequantizing each group of 32 weights in registers. `dequantize` turns row
// ranges back into float32 tiles for the compute-bound prefill, which then runs the BLAS GEMM.
//
// simd_body.h holds the kernels once; it is compiled here once per instruction set under
// `#pragma GCC target`, so the library needs no -march flag and picks the set at run time (the
// caller passes it: Python reads the CPU's flags and QWEN_AUDIO_ISA). Threads come from
// PyTorch's own pool (at::parallel_for), so torch.set_num_threads governs them too.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr int kGroup = 32;  // weights per scale in q8/q4; K must be a multiple of it
constexpr int kMaxInputRows = 16;
enum Format { kBf16 = 0, kFp16 = 1, kQ8 = 2, kQ4 = 3 };
enum Isa { kNone = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kNeon = 4 };

using GemvFn = void (*)(int, const void*, const uint16_t*, const float*, int64_t, int64_t, float*,
                        int64_t, int64_t, int64_t);
using DequantFn = void (*)(int, const void*, const uint16_t*, int64_t, int64_t, int64_t, float*);

}  // namespace

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QWEN_AUDIO_X86 1

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
struct V {
  static constexpr int W = 8;
  static constexpr int kMaxRows = 4;  // 16 ymm registers: 4 rows x 2 chains + 4 weights + x
  using F = __m256;
  static inline F zero() { return _mm256_setzero_ps(); }
  static inline F load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static inline F set1(float v) { return _mm256_set1_ps(v); }
  static inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
  static inline float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
  }
  static inline float half(uint16_t h) { return _cvtsh_ss(h); }
  static inline F bf16(const uint16_t* p) {  // bf16 is the top half of a float32
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static inline F fp16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  }
  static inline F from_bytes(__m128i b) {  // the low 8 signed bytes -> 8 floats
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  static inline void q8(const int8_t* p, F out[4]) {
    const __m128i a = _mm_loadu_si128((const __m128i*)p);
    const __m128i b = _mm_loadu_si128((const __m128i*)(p + 16));
    out[0] = from_bytes(a);
    out[1] = from_bytes(_mm_srli_si128(a, 8));
    out[2] = from_bytes(b);
    out[3] = from_bytes(_mm_srli_si128(b, 8));
  }
  static inline void q4(const uint8_t* p, F out[4]) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, mask), eight);  // weights 0..15
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight);  // 16..31
    out[0] = from_bytes(lo);
    out[1] = from_bytes(_mm_srli_si128(lo, 8));
    out[2] = from_bytes(hi);
    out[3] = from_bytes(_mm_srli_si128(hi, 8));
  }
};
#define KMAXROWS 4
#include "simd_body.h"
#undef KMAXROWS
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace avx512 {
struct V {
  static constexpr int W = 16;
  static constexpr int kMaxRows = 8;  // 32 zmm registers
  using F = __m512;
  static inline F zero() { return _mm512_setzero_ps(); }
  static inline F load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static inline F set1(float v) { return _mm512_set1_ps(v); }
  static inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
  static inline float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static inline float half(uint16_t h) { return _cvtsh_ss(h); }
  static inline F bf16(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static inline F fp16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  }
  static inline F from_bytes(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
  static inline void q8(const int8_t* p, F out[2]) {
    out[0] = from_bytes(_mm_loadu_si128((const __m128i*)p));
    out[1] = from_bytes(_mm_loadu_si128((const __m128i*)(p + 16)));
  }
  static inline void q4(const uint8_t* p, F out[2]) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    out[0] = from_bytes(_mm_sub_epi8(_mm_and_si128(b, mask), eight));
    out[1] = from_bytes(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight));
  }
};
#define KMAXROWS 8
#include "simd_body.h"
#undef KMAXROWS
}  // namespace avx512
#pragma GCC pop_options

// bf16 inputs times bf16 weights with AVX512-BF16's pair dot product (`vdpbf16ps`), bf16 out:
// the native-bf16 decode path (34 vs 15 GB/s for PyTorch's bf16 GEMM on one core there).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
namespace avx512_bf16 {
inline uint16_t to_bf16(float value) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

template <int M>
void rows_times_weights(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t K, int64_t N,
                        int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n++) {
    __m512 acc[M];
    for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
    const uint16_t* row = w + n * K;
    for (int64_t k = 0; k < K; k += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(row + k);
      for (int m = 0; m < M; m++) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k);
        acc[m] = _mm512_dpbf16_ps(acc[m], wv, xv);
      }
    }
    for (int m = 0; m < M; m++) y[m * N + n] = to_bf16(_mm512_reduce_add_ps(acc[m]));
  }
}

template <int M>
void dispatch(int rows, const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t K, int64_t N,
              int64_t n0, int64_t n1) {
  if constexpr (M > 0) {
    if (rows == M) return rows_times_weights<M>(x, w, y, K, N, n0, n1);
    dispatch<M - 1>(rows, x, w, y, K, N, n0, n1);
  }
}
}  // namespace avx512_bf16
#pragma GCC pop_options
#endif  // x86

#if defined(__aarch64__)
#include <arm_neon.h>
namespace neon {
struct V {
  static constexpr int W = 4;
  static constexpr int kMaxRows = 4;
  using F = float32x4_t;
  static inline F zero() { return vdupq_n_f32(0.0f); }
  static inline F load(const float* p) { return vld1q_f32(p); }
  static inline void store(float* p, F v) { vst1q_f32(p, v); }
  static inline F set1(float v) { return vdupq_n_f32(v); }
  static inline F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static inline F mul(F a, F b) { return vmulq_f32(a, b); }
  static inline F add(F a, F b) { return vaddq_f32(a, b); }
  static inline float hsum(F v) { return vaddvq_f32(v); }
  static inline float half(uint16_t h) {
    __fp16 v;
    std::memcpy(&v, &h, sizeof(v));
    return static_cast<float>(v);
  }
  static inline F bf16(const uint16_t* p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
  }
  static inline F fp16(const uint16_t* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
  }
  static inline void from_bytes(int8x16_t b, F out[4]) {  // 16 signed bytes -> 16 floats
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
    out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
  }
  static inline void q8(const int8_t* p, F out[8]) {
    from_bytes(vld1q_s8(p), out);
    from_bytes(vld1q_s8(p + 16), out + 4);
  }
  static inline void q4(const uint8_t* p, F out[8]) {
    const uint8x16_t b = vld1q_u8(p);
    const int8x16_t eight = vdupq_n_s8(8);
    from_bytes(vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), eight), out);
    from_bytes(vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight), out + 4);
  }
};
#define KMAXROWS 4
#include "simd_body.h"
#undef KMAXROWS
}  // namespace neon
#endif  // aarch64

namespace {

struct Kernels {
  GemvFn gemv;
  DequantFn dequantize;
};

Kernels kernels_for(int64_t isa) {
#if defined(QWEN_AUDIO_X86)
  if (isa == kAvx2) return {avx2::gemv, avx2::dequantize};
  if (isa == kAvx512 || isa == kAvx512Bf16) return {avx512::gemv, avx512::dequantize};
#endif
#if defined(__aarch64__)
  if (isa == kNeon) return {neon::gemv, neon::dequantize};
#endif
  TORCH_CHECK(false, "instruction set ", isa, " is not compiled into this build");
}

// Checks a weight of `format` for K inputs and returns N, its number of output rows.
int64_t check_weight(const torch::Tensor& w, const torch::Tensor& s, int64_t format) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "weight: contiguous 2-D");
  const int64_t N = w.size(0);
  if (format == kBf16) TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "bf16 weight expected");
  if (format == kFp16) TORCH_CHECK(w.scalar_type() == torch::kHalf, "fp16 weight expected");
  if (format == kQ8) TORCH_CHECK(w.scalar_type() == torch::kChar, "int8 weight expected");
  if (format == kQ4) TORCH_CHECK(w.scalar_type() == torch::kByte, "uint8 packed weight expected");
  TORCH_CHECK(format >= kBf16 && format <= kQ4, "unknown weight format ", format);
  if (format == kQ8 || format == kQ4) {
    const int64_t K = format == kQ4 ? w.size(1) * 2 : w.size(1);
    TORCH_CHECK(s.scalar_type() == torch::kHalf && s.is_contiguous() && s.dim() == 2 &&
                    s.size(0) == N && s.size(1) == K / kGroup,
                "scales: contiguous fp16 (N, K/32)");
  }
  return N;
}

int64_t inputs_of(const torch::Tensor& w, int64_t format) {
  return format == kQ4 ? w.size(1) * 2 : w.size(1);
}

const uint16_t* scales_ptr(const torch::Tensor& s, int64_t format) {
  return format == kQ8 || format == kQ4 ? reinterpret_cast<const uint16_t*>(s.data_ptr()) : nullptr;
}

}  // namespace

// y (M, N) float32 = x (M, K) float32 @ weight^T, for M <= 16.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& s,
                     int64_t format, int64_t isa) {
  const int64_t N = check_weight(w, s, format), K = inputs_of(w, format);
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.size(1) == K,
              "x: float32 (M, K) with K = the weight's inputs");
  TORCH_CHECK(K % kGroup == 0, "K must be a multiple of 32");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxInputRows, "1 to 16 input rows");
  const auto xc = x.contiguous();
  const int64_t M = xc.size(0);
  auto y = torch::empty({M, N}, xc.options());
  const Kernels k = kernels_for(isa);
  const void* wp = w.data_ptr();
  const uint16_t* sp = scales_ptr(s, format);
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Small grains keep both cores busy on narrow matrices; each grain is >= 16 KB of weights.
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    k.gemv(static_cast<int>(format), wp, sp, xp, M, K, yp, N, n0, n1);
  });
  return y;
}

// The float32 rows [n0, n1) of a weight: (n1 - n0, K).
torch::Tensor dequantize(const torch::Tensor& w, const torch::Tensor& s, int64_t format,
                         int64_t isa, int64_t n0, int64_t n1) {
  const int64_t N = check_weight(w, s, format), K = inputs_of(w, format);
  TORCH_CHECK(K % kGroup == 0, "K must be a multiple of 32");
  TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= N, "row range out of bounds");
  auto out = torch::empty({n1 - n0, K}, torch::dtype(torch::kFloat));
  const Kernels k = kernels_for(isa);
  const void* wp = w.data_ptr();
  const uint16_t* sp = scales_ptr(s, format);
  float* op = out.data_ptr<float>();
  at::parallel_for(n0, n1, 8, [&](int64_t a, int64_t b) {
    k.dequantize(static_cast<int>(format), wp, sp, K, a, b, op + (a - n0) * K);
  });
  return out;
}

// y (M, N) bf16 = x (M, K) bf16 @ w (N, K) bf16^T with AVX512-BF16, for M <= 16.
torch::Tensor linear_bf16_native(const torch::Tensor& x, const torch::Tensor& w) {
#if defined(QWEN_AUDIO_X86)
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16,
              "bfloat16 tensors expected");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "shapes (M, K), (N, K)");
  TORCH_CHECK(x.size(1) % 32 == 0, "K must be a multiple of 32");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxInputRows, "1 to 16 input rows");
  const auto xc = x.contiguous();
  const auto wc = w.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = wc.size(0);
  auto y = torch::empty({M, N}, xc.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    avx512_bf16::dispatch<kMaxInputRows>(static_cast<int>(M), xp, wp, yp, K, N, n0, n1);
  });
  return y;
#else
  TORCH_CHECK(false, "AVX512-BF16 kernels exist only on x86-64");
#endif
}

std::vector<int64_t> compiled_isas() {
  std::vector<int64_t> isas;
#if defined(QWEN_AUDIO_X86)
  isas = {kAvx2, kAvx512, kAvx512Bf16};
#endif
#if defined(__aarch64__)
  isas = {kNeon};
#endif
  return isas;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "x (M, K) float32 @ packed weight^T, M <= 16");
  m.def("dequantize", &dequantize, "float32 rows [n0, n1) of a packed weight");
  m.def("linear_bf16_native", &linear_bf16_native, "bf16 x @ bf16 w^T (AVX512-BF16)");
  m.def("compiled_isas", &compiled_isas, "instruction sets in this build");
}
