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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "kernel_api.h"

namespace {

// kAvx2Vnni: AVX2 with AVX-VNNI (Alder Lake and later, Zen 5): the AVX2 kernels, with
// `vpdpbusd` for int8/int4 in 8-row blocks; ids as kernels/__init__.py's ISA_IDS
enum Isa { kNone = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kNeon = 4, kAvx2Vnni = 5 };

using GemvFn = void (*)(int, const void*, const uint16_t*, const float*, int64_t, int64_t, float*,
                        int64_t, int64_t, int64_t);
using DequantFn = void (*)(int, const void*, const uint16_t*, int64_t, int64_t, int64_t, void*,
                          bool);
using AttentionFn = void (*)(int, const float*, const PagedHead&, const PagedHead&, float, float*,
                             float*);

}  // namespace

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QWEN_AUDIO_X86 1
#if defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#include "isa_avx2.h"
#define KMAXROWS 4
#include "simd_body.h"
#undef KMAXROWS
void gemv(int format, const void* w, const uint16_t* s, const float* x, int64_t M, int64_t K,
          float* y, int64_t N, int64_t n0, int64_t n1) {
  gemv_float(format, w, s, x, M, K, y, N, n0, n1);
}

// int8/int4 weights times int8-quantized inputs, as llama.cpp does on AVX2: the inputs are
// rounded to int8 once per call (one scale per group of 32), and `vpmaddubsw` multiplies 32
// byte pairs per instruction, half the work of widening every weight to float32.
struct QuantizedRows {
  const int8_t* q;      // (M, K) inputs as int8
  const float* d;       // (M, K/32) their scales
  const float* off;     // (M, K/32) 8 * scale * sum of the group's q: the int4 zero point's share
  const int32_t* zero;  // (M, K/32) 8 * sum of the group's q, the same share before scaling

  QuantizedRows from_row(int64_t m0, int64_t K) const {  // rows m0 and on
    const int64_t groups = K / kGroup;
    return {q + m0 * K, d + m0 * groups, off + m0 * groups, zero + m0 * groups};
  }
};

void quantize_inputs(const float* x, int64_t M, int64_t K, int8_t* q, float* d, float* off,
                     int32_t* zero) {
  const int64_t groups = K / kGroup;
  for (int64_t m = 0; m < M; m++) {
    for (int64_t g = 0; g < groups; g++) {
      const float* xg = x + m * K + g * kGroup;
      float amax = 0.0f;
      for (int j = 0; j < kGroup; j++) amax = std::max(amax, std::fabs(xg[j]));
      const float scale = amax / 127.0f;
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int sum = 0;
      int8_t* qg = q + m * K + g * kGroup;
      for (int j = 0; j < kGroup; j++) {
        const int v = static_cast<int>(std::nearbyint(xg[j] * inv));
        qg[j] = static_cast<int8_t>(v);
        sum += v;
      }
      d[m * groups + g] = scale;
      off[m * groups + g] = 8.0f * scale * static_cast<float>(sum);
      zero[m * groups + g] = 8 * sum;
    }
  }
}

inline __m256 dot_u8_s8(__m256i u, __m256i s) {  // 32 byte products -> 8 float partial sums
  const __m256i pairs = _mm256_maddubs_epi16(u, s);  // <= 2 * 127 * 127: never saturates
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

inline __m256i int_weights_q4(const uint8_t* p) {  // 16 bytes -> 32 unsigned nibbles in order
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

constexpr int64_t kMaxGroups = 1024;  // K <= 32768 in this path (Qwen2-Audio's widest is 11008)

// The per-group work is the bottleneck on 2 cores (the weights stream at ~20 GB/s per core), so
// everything that does not need the weights' bytes leaves the group loop: the combined scales
// (weight scale x input scale) of a row are made 8 groups at a time before it, and int4's zero
// point (8 x scale x the inputs' sum per group) is one vector dot product after it.
inline void combined_scales(const uint16_t* ws, const float* xd, int64_t groups, float* out) {
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ws + g)));
    _mm256_storeu_ps(out + g, _mm256_mul_ps(dw, _mm256_loadu_ps(xd + g)));
  }
  for (; g < groups; g++) out[g] = _cvtsh_ss(ws[g]) * xd[g];
}

inline float zero_point(const uint16_t* ws, const float* off, int64_t groups) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(ws + g)));
    acc = _mm256_fmadd_ps(dw, _mm256_loadu_ps(off + g), acc);
  }
  float total = V::hsum(acc);
  for (; g < groups; g++) total += _cvtsh_ss(ws[g]) * off[g];
  return total;
}

// Two accumulators per row, even and odd groups (unrolled by two, so both stay in registers),
// whatever MR is: a row's sums do not depend on the batch (batched == single).
template <bool kQ4Format, int MR>
void int_rows(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t K, float* y,
              int64_t N, int64_t n0, int64_t n1) {
  const int64_t groups = K / kGroup;
  const int64_t row_bytes = kQ4Format ? K / 2 : K;
  alignas(32) float scale[MR][kMaxGroups];
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t* row = w + n * row_bytes;
    const uint16_t* ws = s + n * groups;
    __m256 even[MR], odd[MR];
    for (int m = 0; m < MR; m++) {
      combined_scales(ws, x.d + m * groups, groups, scale[m]);
      even[m] = odd[m] = _mm256_setzero_ps();
    }
    const auto group = [&](int64_t g, __m256* acc) {
      __m256i u, sign;
      if constexpr (kQ4Format) {
        u = int_weights_q4(row + g * (kGroup / 2));
      } else {
        sign = _mm256_loadu_si256((const __m256i*)(row + g * kGroup));
        u = _mm256_sign_epi8(sign, sign);  // |w|; the sign moves onto the inputs
      }
      for (int m = 0; m < MR; m++) {
        __m256i xv = _mm256_loadu_si256((const __m256i*)(x.q + m * K + g * kGroup));
        if constexpr (!kQ4Format) xv = _mm256_sign_epi8(xv, sign);
        acc[m] = _mm256_fmadd_ps(dot_u8_s8(u, xv), _mm256_broadcast_ss(&scale[m][g]), acc[m]);
      }
    };
    int64_t g = 0;
    for (; g + 1 < groups; g += 2) {
      group(g, even);
      group(g + 1, odd);
    }
    if (g < groups) group(g, even);
    for (int m = 0; m < MR; m++) {
      float sum = V::hsum(_mm256_add_ps(even[m], odd[m]));
      if constexpr (kQ4Format) sum -= zero_point(ws, x.off + m * groups, groups);
      y[m * N + n] = sum;
    }
  }
}

// Weight rows taken at a time while every block of input rows passes over them: 16 rows of 4096
// int4 weights are 32 KB, so from the second block of inputs on they come from cache, not
// memory. One block (decoding, M <= 4) reads each weight byte from memory once; a prefill of
// hundreds of rows, once per chunk instead of once per block of 4 rows.
constexpr int64_t kWeightRowChunk = 16;

template <bool kQ4Format>
void int_gemv(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t M, int64_t K,
              float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t groups = K / kGroup;
  for (int64_t c0 = n0; c0 < n1; c0 += kWeightRowChunk) {
    const int64_t c1 = std::min(n1, c0 + kWeightRowChunk);
    for (int64_t m0 = 0; m0 < M; m0 += V::kMaxRows) {
      const int64_t mr = M - m0 < V::kMaxRows ? M - m0 : V::kMaxRows;
      const QuantizedRows xm = x.from_row(m0, K);
      float* ym = y + m0 * N;
      switch (mr) {
        case 1: int_rows<kQ4Format, 1>(w, s, xm, K, ym, N, c0, c1); break;
        case 2: int_rows<kQ4Format, 2>(w, s, xm, K, ym, N, c0, c1); break;
        case 3: int_rows<kQ4Format, 3>(w, s, xm, K, ym, N, c0, c1); break;
        default: int_rows<kQ4Format, 4>(w, s, xm, K, ym, N, c0, c1); break;
      }
    }
  }
}

void gemv_quantized_inputs(int format, const void* w, const uint16_t* s, const QuantizedRows& x,
                           int64_t M, int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
  const auto* bytes = static_cast<const uint8_t*>(w);
  if (format == kQ4) return int_gemv<true>(bytes, s, x, M, K, y, N, n0, n1);
  int_gemv<false>(bytes, s, x, M, K, y, N, n0, n1);
}

#define ROW_BLOCKS_VNNI 0
#include "row_blocks_body.h"
#undef ROW_BLOCKS_VNNI
}  // namespace avx2
#pragma GCC pop_options

// The 8-row blocks with AVX-VNNI (`vpdpbusd` on 256-bit registers: Alder Lake and later, Zen 5),
// which adds 4 byte products into each 32-bit lane in one instruction. The integer sums are
// exact either way, so this gives the AVX2 kernel's bits.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
namespace avx2_vnni {
using avx2::kWeightRowChunk;
using avx2::QuantizedRows;
#define ROW_BLOCKS_VNNI 1
#define ROW_BLOCKS_DPBUSD _mm256_dpbusd_avx_epi32
#include "row_blocks_body.h"
#undef ROW_BLOCKS_DPBUSD
#undef ROW_BLOCKS_VNNI
}  // namespace avx2_vnni
#pragma GCC pop_options

// The same blocks for AVX-512 CPUs with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), where
// they beat the 512-bit row kernels below (model/int_layout.py measures it; on a Zen 4 and a
// Sapphire Rapids they do): two blocks at a time in 512-bit registers (row_block_pairs.h), and
// a lone last block with the 256-bit EVEX `vpdpbusd`.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace avx512_vnni_blocks {
using avx2::kWeightRowChunk;
using avx2::QuantizedRows;
#define ROW_BLOCKS_VNNI 1
#define ROW_BLOCKS_DPBUSD _mm256_dpbusd_epi32
#include "row_blocks_body.h"
#undef ROW_BLOCKS_DPBUSD
#undef ROW_BLOCKS_VNNI
#include "row_block_pairs.h"
}  // namespace avx512_vnni_blocks
#pragma GCC pop_options

// bf16 prompts times int8/int4 blocks on AMX (amx_bf16_blocks.h), where amx_usable(). Its
// intrinsics came with GCC 11 and clang 12; an older compiler builds everything else.
#if defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define QWEN_AUDIO_AMX 1
#pragma GCC push_options
#pragma GCC target( \
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,amx-tile,amx-bf16")
namespace amx {
#include "amx_bf16_blocks.h"
}  // namespace amx
#pragma GCC pop_options
#endif

// The same int8-input products with AVX512-VNNI (Ice Lake and later, Zen 4 and later): two groups
// of 32 weights per 512-bit register and `vpdpbusd` (64 byte products into 16 int32 sums in one
// instruction), about half the per-group instructions of the AVX2 loop, which on 2 cores is what
// bounds int4 decoding. Lanes 0-7 of a product hold group g's partial sums, lanes 8-15 group
// g+1's; a row's sums are made in the same order whatever MR is (batched == single).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
namespace avx512_vnni {
using avx2::combined_scales;
using avx2::kMaxGroups;
using avx2::QuantizedRows;
using avx2::zero_point;

inline __m512i pair_q4(const uint8_t* p) {  // 2 groups' 32 bytes -> their 64 nibbles in order
  const __m256i b = _mm256_loadu_si256((const __m256i*)p);
  const __m512i lo_hi = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
  const __m512i nibbles = _mm512_and_si512(lo_hi, _mm512_set1_epi8(0x0F));
  // [g w0-15, g+1 w0-15, g w16-31, g+1 w16-31] -> [g w0-15, g w16-31, g+1 w0-15, g+1 w16-31]
  return _mm512_shuffle_i64x2(nibbles, nibbles, _MM_SHUFFLE(3, 1, 2, 0));
}

inline __m512i pair_q4_single(const uint8_t* p) {  // one group: its 32 nibbles, then zeros
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m256i both = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask),
                                        _mm_and_si128(b, mask));
  return _mm512_zextsi256_si512(both);
}

inline __m512 pair_scales(const float* scale) {  // [scale[0] x 8, scale[1] x 8]
  const __m512i index = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(scale)));
  return _mm512_permutexvar_ps(index, _mm512_castps128_ps512(two));
}

template <bool kQ4Format, int MR>
void int_rows(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t K, float* y,
              int64_t N, int64_t n0, int64_t n1) {
  const int64_t groups = K / kGroup;
  const int64_t row_bytes = kQ4Format ? K / 2 : K;
  alignas(64) float scale[MR][kMaxGroups + 2];
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t* row = w + n * row_bytes;
    const uint16_t* ws = s + n * groups;
    __m512 even[MR], odd[MR];
    for (int m = 0; m < MR; m++) {
      combined_scales(ws, x.d + m * groups, groups, scale[m]);
      scale[m][groups] = 0.0f;  // the partner of an odd last group
      even[m] = odd[m] = _mm512_setzero_ps();
    }
    // groups [g, g + 2), or only g when `single` (the upper half of every load is zero)
    const auto pair = [&](int64_t g, bool single, __m512* acc) {
      const __mmask64 bytes = single ? 0xFFFFFFFFull : ~0ull;  // x: 32 or 64 bytes
      __m512i u;
      __mmask64 negative = 0;
      if constexpr (kQ4Format) {
        u = single ? pair_q4_single(row + g * (kGroup / 2)) : pair_q4(row + g * (kGroup / 2));
      } else {
        const __m512i wv = _mm512_maskz_loadu_epi8(bytes, row + g * kGroup);
        negative = _mm512_movepi8_mask(wv);
        u = _mm512_abs_epi8(wv);  // |w|; the sign moves onto the inputs
      }
      for (int m = 0; m < MR; m++) {
        __m512i xv = _mm512_maskz_loadu_epi8(bytes, x.q + m * K + g * kGroup);
        if constexpr (!kQ4Format) xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
        const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), pair_scales(&scale[m][g]), acc[m]);
      }
    };
    int64_t g = 0;
    for (; g + 3 < groups; g += 4) {
      pair(g, false, even);
      pair(g + 2, false, odd);
    }
    for (; g + 1 < groups; g += 2) pair(g, false, even);
    if (g < groups) pair(g, true, odd);
    for (int m = 0; m < MR; m++) {
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[m], odd[m]));
      if constexpr (kQ4Format) sum -= zero_point(ws, x.off + m * groups, groups);
      y[m * N + n] = sum;
    }
  }
}

template <bool kQ4Format>
void int_gemv(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t M, int64_t K,
              float* y, int64_t N, int64_t n0, int64_t n1) {
  constexpr int64_t kMaxRows = 4;
  const int64_t groups = K / kGroup;
  for (int64_t c0 = n0; c0 < n1; c0 += avx2::kWeightRowChunk) {  // as avx2::int_gemv
    const int64_t c1 = std::min(n1, c0 + avx2::kWeightRowChunk);
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
      const int64_t mr = M - m0 < kMaxRows ? M - m0 : kMaxRows;
      const QuantizedRows xm = x.from_row(m0, K);
      float* ym = y + m0 * N;
      switch (mr) {
        case 1: avx512_vnni::int_rows<kQ4Format, 1>(w, s, xm, K, ym, N, c0, c1); break;
        case 2: avx512_vnni::int_rows<kQ4Format, 2>(w, s, xm, K, ym, N, c0, c1); break;
        case 3: avx512_vnni::int_rows<kQ4Format, 3>(w, s, xm, K, ym, N, c0, c1); break;
        default: avx512_vnni::int_rows<kQ4Format, 4>(w, s, xm, K, ym, N, c0, c1); break;
      }
    }
  }
}

void gemv_quantized_inputs(int format, const void* w, const uint16_t* s, const QuantizedRows& x,
                           int64_t M, int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
  const auto* bytes = static_cast<const uint8_t*>(w);
  // qualified: QuantizedRows comes from avx2, so its int_gemv would be found too
  if (format == kQ4) return avx512_vnni::int_gemv<true>(bytes, s, x, M, K, y, N, n0, n1);
  avx512_vnni::int_gemv<false>(bytes, s, x, M, K, y, N, n0, n1);
}
}  // namespace avx512_vnni
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace avx512 {
#include "isa_avx512.h"
#define KMAXROWS 8
#include "simd_body.h"
#undef KMAXROWS
void gemv(int format, const void* w, const uint16_t* s, const float* x, int64_t M, int64_t K,
          float* y, int64_t N, int64_t n0, int64_t n1) {
  gemv_float(format, w, s, x, M, K, y, N, n0, n1);
}
}  // namespace avx512
#pragma GCC pop_options

// bf16 inputs times bf16 weights with AVX512-BF16's pair dot product (`vdpbf16ps`), bf16 out:
// the native-bf16 decode path (34 vs 15 GB/s for PyTorch's bf16 GEMM on one core there).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512bf16")
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

// The prefill GEMM's bf16 tiles through `vcvtne2ps2bf16` (32 floats to bf16 in one instruction,
// rounded to nearest even), where avx512::dequantize rounds in integer instructions: on a
// Sapphire Rapids VM the tiles are compute bound. Same bits: it treats subnormal floats as 0,
// and none arise from int8/int4 (an integer times an fp16 scale) or fp16 weights; bf16 weights,
// which can hold float32 subnormals, keep the integer rounding.
template <class Rows>
void bf16_tiles(const Rows& rows, int64_t K, int64_t n0, int64_t n1, uint16_t* out) {
  const int64_t groups = K / kGroup;
  for (int64_t n = n0; n < n1; n++) {
    for (int64_t g = 0; g < groups; g++) {
      __m512 w[2];  // weights 0..15, 16..31 of the group
      rows.group(n, g, w);
      const __m512bh both = _mm512_cvtne2ps_pbh(w[1], w[0]);  // w[0]'s in the low half
      _mm512_storeu_si512(out + (n - n0) * K + g * kGroup, (__m512i)both);
    }
  }
}

void dequantize(int format, const void* w, const uint16_t* s, int64_t K, int64_t n0, int64_t n1,
                void* out, bool bf16) {
  auto* tile = static_cast<uint16_t*>(out);
  const auto* bytes = static_cast<const uint8_t*>(w);
  if (bf16) {
    switch (format) {
      case kFp16:
        return bf16_tiles(avx512::Fp16Rows{static_cast<const uint16_t*>(w), K}, K, n0, n1, tile);
      case kQ8:
        return bf16_tiles(avx512::Q8Rows{static_cast<const int8_t*>(w), s, K}, K, n0, n1, tile);
      case kQ4: return bf16_tiles(avx512::Q4Rows{bytes, s, K}, K, n0, n1, tile);
      case kQ4x8: return bf16_tiles(avx512::BlockRows<4>{bytes, s, K}, K, n0, n1, tile);
      case kQ8x8: return bf16_tiles(avx512::BlockRows<8>{bytes, s, K}, K, n0, n1, tile);
      default: break;
    }
  }
  avx512::dequantize(format, w, s, K, n0, n1, out, bf16);
}
}  // namespace avx512_bf16
#pragma GCC pop_options
#endif  // x86

#if defined(__aarch64__)
#include <arm_neon.h>
namespace neon {
#include "isa_neon.h"
#define KMAXROWS 4
#include "simd_body.h"
#undef KMAXROWS
void gemv(int format, const void* w, const uint16_t* s, const float* x, int64_t M, int64_t K,
          float* y, int64_t N, int64_t n0, int64_t n1) {
  gemv_float(format, w, s, x, M, K, y, N, n0, n1);
}
}  // namespace neon
#endif  // aarch64

namespace {

struct Kernels {
  GemvFn gemv;
  DequantFn dequantize;
  AttentionFn attention;
};

Kernels kernels_for(int64_t isa) {
#if defined(QWEN_AUDIO_X86)
  if (isa == kAvx2 || isa == kAvx2Vnni)
    return {avx2::gemv, avx2::dequantize, avx2::attention};
  if (isa == kAvx512) return {avx512::gemv, avx512::dequantize, avx512::attention};
  if (isa == kAvx512Bf16) return {avx512::gemv, avx512_bf16::dequantize, avx512::attention};
#endif
#if defined(__aarch64__)
  if (isa == kNeon)
    return {neon::gemv, neon::dequantize, neon::attention};
#endif
  TORCH_CHECK(false, "instruction set ", isa, " is not compiled into this build");
}

bool row_blocks(int64_t format) { return format == kQ4x8 || format == kQ8x8; }

int64_t inputs_of(const torch::Tensor& w, int64_t format) {
  return format == kQ4 || format == kQ4x8 ? w.size(1) * 2 : w.size(1);
}

// Checks a weight of `format` for K inputs and returns N, its number of output rows.
int64_t check_weight(const torch::Tensor& w, const torch::Tensor& s, int64_t format) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "weight: contiguous 2-D");
  const int64_t N = w.size(0);
  if (format == kBf16) TORCH_CHECK(w.scalar_type() == torch::kBFloat16, "bf16 weight expected");
  if (format == kFp16) TORCH_CHECK(w.scalar_type() == torch::kHalf, "fp16 weight expected");
  if (format == kQ8) TORCH_CHECK(w.scalar_type() == torch::kChar, "int8 weight expected");
  if (format == kQ8x8) TORCH_CHECK(w.scalar_type() == torch::kChar, "int8 weight expected");
  if (format == kQ4 || format == kQ4x8)
    TORCH_CHECK(w.scalar_type() == torch::kByte, "uint8 packed weight expected");
  TORCH_CHECK(format >= kBf16 && format <= kQ8x8, "unknown weight format ", format);
  if (row_blocks(format)) TORCH_CHECK(N % 8 == 0, "8-row blocks: rows a multiple of 8");
  if (format != kBf16 && format != kFp16) {
    const int64_t K = inputs_of(w, format);
    TORCH_CHECK(s.scalar_type() == torch::kHalf && s.is_contiguous() && s.dim() == 2 &&
                    s.size(0) == N && s.size(1) == K / kGroup,
                "scales: contiguous fp16 (N, K/32)");
  }
  return N;
}

const uint16_t* scales_ptr(const torch::Tensor& s, int64_t format) {
  const bool scaled = format != kBf16 && format != kFp16;
  return scaled ? reinterpret_cast<const uint16_t*>(s.data_ptr()) : nullptr;
}

}  // namespace

// Several weights that multiply the same input (q/k/v, gate/up) side by side: output row r of
// the concatenation is row r - offset[i] of weight i. One call splits the rows of all of them
// between the threads, so the input is rounded once and the pool is woken once per input.
struct Stacked {
  std::vector<const void*> w;
  std::vector<const uint16_t*> s;
  std::vector<int64_t> offset;  // first output of each weight; offset.back() = all outputs
  int64_t total() const { return offset.back(); }

  // fn(i, n0, n1, column) for the pieces of weights that the outputs [a, b) cover
  template <class Fn>
  void for_range(int64_t a, int64_t b, Fn fn) const {
    for (size_t i = 0; i + 1 < offset.size(); i++) {
      const int64_t lo = std::max(a, offset[i]), hi = std::min(b, offset[i + 1]);
      if (lo < hi) fn(i, lo - offset[i], hi - offset[i], offset[i]);
    }
  }
};

Stacked stack_weights(const std::vector<torch::Tensor>& ws, const std::vector<torch::Tensor>& ss,
                      int64_t format, int64_t* K) {
  TORCH_CHECK(!ws.empty() && ws.size() == ss.size(), "one scales tensor per weight");
  Stacked st;
  st.offset.push_back(0);
  *K = inputs_of(ws[0], format);
  for (size_t i = 0; i < ws.size(); i++) {
    const int64_t N = check_weight(ws[i], ss[i], format);
    TORCH_CHECK(inputs_of(ws[i], format) == *K, "every weight takes the same inputs");
    st.w.push_back(ws[i].data_ptr());
    st.s.push_back(scales_ptr(ss[i], format));
    st.offset.push_back(st.offset.back() + N);
  }
  return st;
}

// Whether `linear` takes any number of rows for this format: int8/int4 on x86-64, whose
// int8-input products also beat dequantizing for the float32 GEMM when rows are many.
bool int_inputs_path(int64_t format, int64_t isa, int64_t K) {
#if defined(QWEN_AUDIO_X86)
  return isa != kNeon && isa != kNone && format >= kQ8 && format <= kQ8x8 &&
         K <= avx2::kMaxGroups * kGroup;
#else
  return false;
#endif
}

#if defined(QWEN_AUDIO_X86)
bool avx512_vnni_usable(int64_t isa) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return (isa == kAvx512 || isa == kAvx512Bf16) && vnni;
}
#endif

// Whether bf16 prompts may meet int8/int4 blocks on AMX (amx_prompt_linear): the instruction
// set is the top one (QWEN_AUDIO_ISA=avx512 or lower turns AMX off), the CPU has AMX-TILE and
// AMX-BF16, and Linux lets this process use the tile registers (arch_prctl asks for them).
bool amx_usable(int64_t isa) {
#if defined(QWEN_AUDIO_AMX)
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const unsigned amx_bf16 = 1u << 22, amx_tile = 1u << 24;
    if ((d & amx_bf16) == 0 || (d & amx_tile) == 0) return false;
    const long request_permission = 0x1023, tile_data = 18;  // ARCH_REQ_XCOMP_PERM, XTILEDATA
    return syscall(SYS_arch_prctl, request_permission, tile_data) == 0;
  }();
  return isa == kAvx512Bf16 && usable;
#else
  (void)isa;
  return false;
#endif
}

// Whether int8/int4 weights must be repacked in 8-row blocks (kQ8x8 / kQ4x8) for this
// instruction set: where their products run on the AVX2 kernels (AVX2 CPUs, AVX-512 without
// VNNI). With AVX-512 VNNI both layouts have kernels; model/int_layout.py measures which wins.
bool prefers_row_blocks(int64_t isa) {
#if defined(QWEN_AUDIO_X86)
  return isa != kNeon && isa != kNone && !avx512_vnni_usable(isa);
#else
  return false;
#endif
}

// y (M, sum of N) float32 = x (M, K) float32 @ [weight_0; weight_1; ...]^T, for M <= 16 (any M
// on the int8-input path).
torch::Tensor linear_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws,
                          const std::vector<torch::Tensor>& ss, int64_t format, int64_t isa) {
  int64_t K = 0;
  const Stacked st = stack_weights(ws, ss, format, &K);
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.size(1) == K,
              "x: float32 (M, K) with K = the weight's inputs");
  TORCH_CHECK(K % kGroup == 0, "K must be a multiple of 32");
  TORCH_CHECK(x.size(0) >= 1 && (x.size(0) <= kMaxInputRows || int_inputs_path(format, isa, K)),
              "1 to 16 input rows");
  TORCH_CHECK(!row_blocks(format) || int_inputs_path(format, isa, K),
              "8-row blocks need the x86-64 int8-input kernels");
  const auto xc = x.contiguous();
  const int64_t M = xc.size(0), NT = st.total();
  auto y = torch::empty({M, NT}, xc.options());
  const Kernels k = kernels_for(isa);
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#if defined(QWEN_AUDIO_X86)
  // int8/int4 on every x86 instruction set: widening each weight to float32 (the AVX-512 body)
  // is compute bound on 2 cores, the int8-input dot products keep up with memory (7B int4
  // decode on AVX-512: 4.8 tok/s through floats; see the README for the int8-input figure).
  if (int_inputs_path(format, isa, K)) {
    auto xq = torch::empty({M, K}, torch::dtype(torch::kChar));
    auto d = torch::empty({M, K / kGroup}, xc.options());
    auto off = torch::empty({M, K / kGroup}, xc.options());
    auto zero = torch::empty({M, K / kGroup}, torch::dtype(torch::kInt));
    const int64_t groups = K / kGroup;
    int8_t* qp = xq.data_ptr<int8_t>();
    float *dp = d.data_ptr<float>(), *op = off.data_ptr<float>();
    int32_t* zp = zero.data_ptr<int32_t>();
    at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
      avx2::quantize_inputs(xp + m0 * K, m1 - m0, K, qp + m0 * K, dp + m0 * groups,
                            op + m0 * groups, zp + m0 * groups);
    });
    const avx2::QuantizedRows rows{qp, dp, op, zp};
    if (row_blocks(format)) {  // whole 8-row blocks to each thread (every weight's N % 8 == 0)
      auto int4 = avx2::RowBlocks<true>::gemv;
      auto int8 = avx2::RowBlocks<false>::gemv;
      if (isa == kAvx2Vnni) {
        int4 = avx2_vnni::RowBlocks<true>::gemv, int8 = avx2_vnni::RowBlocks<false>::gemv;
      } else if (avx512_vnni_usable(isa)) {
        int4 = avx512_vnni_blocks::RowBlockPairs<true>::gemv;
        int8 = avx512_vnni_blocks::RowBlockPairs<false>::gemv;
      }
      const auto blocks = format == kQ4x8 ? int4 : int8;
      at::parallel_for(0, NT / 8, 2, [&](int64_t a, int64_t b) {
        st.for_range(a * 8, b * 8, [&](size_t i, int64_t n0, int64_t n1, int64_t col) {
          blocks(static_cast<const uint8_t*>(st.w[i]), st.s[i], rows, M, K, yp + col, NT, n0, n1);
        });
      });
      return y;
    }
    const auto gemv = avx512_vnni_usable(isa) ? avx512_vnni::gemv_quantized_inputs
                                              : avx2::gemv_quantized_inputs;
    at::parallel_for(0, NT, 16, [&](int64_t a, int64_t b) {
      st.for_range(a, b, [&](size_t i, int64_t n0, int64_t n1, int64_t col) {
        gemv(static_cast<int>(format), st.w[i], st.s[i], rows, M, K, yp + col, NT, n0, n1);
      });
    });
    return y;
  }
#endif
  // Small grains keep both cores busy on narrow matrices; each grain is >= 16 KB of weights.
  at::parallel_for(0, NT, 16, [&](int64_t a, int64_t b) {
    st.for_range(a, b, [&](size_t i, int64_t n0, int64_t n1, int64_t col) {
      k.gemv(static_cast<int>(format), st.w[i], st.s[i], xp, M, K, yp + col, NT, n0, n1);
    });
  });
  return y;
}

// y (M, N) float32 = x (M, K) float32 @ weight^T: `linear_many` with one weight.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& s,
                     int64_t format, int64_t isa) {
  return linear_many(x, {w}, {s}, format, isa);
}

// Rows [n0, n1) of a packed weight as float32, or as bf16 for a bf16 GEMM: the float32 values
// rounded as .to(torch.bfloat16) rounds them, without the float32 tile in memory. Written into
// `into` when given (a reused buffer of at least that many elements: a fresh tile of many MiB
// costs its page faults at every call), else into a new tensor.
torch::Tensor dequantize(const torch::Tensor& w, const torch::Tensor& s, int64_t format,
                         int64_t isa, int64_t n0, int64_t n1, bool bf16,
                         const c10::optional<torch::Tensor>& into) {
  const int64_t N = check_weight(w, s, format), K = inputs_of(w, format);
  TORCH_CHECK(K % kGroup == 0, "K must be a multiple of 32");
  TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= N, "row range out of bounds");
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  torch::Tensor out;
  if (into.has_value()) {
    TORCH_CHECK(into->is_contiguous() && into->scalar_type() == dtype && into->is_cpu() &&
                    into->numel() >= (n1 - n0) * K,
                "into: a contiguous CPU buffer of the tile's dtype and size");
    out = into->view({-1}).narrow(0, 0, (n1 - n0) * K).view({n1 - n0, K});
  } else {
    out = torch::empty({n1 - n0, K}, torch::dtype(dtype));
  }
  const Kernels k = kernels_for(isa);
  const void* wp = w.data_ptr();
  const uint16_t* sp = scales_ptr(s, format);
  auto* op = static_cast<uint8_t*>(out.data_ptr());
  const int64_t row_bytes = K * out.element_size();
  at::parallel_for(n0, n1, 8, [&](int64_t a, int64_t b) {
    k.dequantize(static_cast<int>(format), wp, sp, K, a, b, op + (a - n0) * row_bytes, bf16);
  });
  return out;
}

// Decode attention for a batch of sequences with one new token each, reading their keys and
// values in place from one layer of the paged KV pool: q (B, H, D) float32; kv (2, Hkv, blocks,
// block_size, D) in bf16, fp16 or float32 (the layer's keys, then its values); tables (B, n)
// int64 block ids (rows may be padded past what their context needs); contexts (B,) int64
// cached tokens of each, its new one included -> (B, H, D) float32. Each (sequence, head) is
// computed alone, so a sequence's result does not depend on the rest of the batch.
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& kv,
                                     const torch::Tensor& tables, const torch::Tensor& contexts,
                                     double scale, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat && q.dim() == 3 && q.is_contiguous(),
              "q: contiguous float32 (B, H, D)");
  TORCH_CHECK(kv.dim() == 5 && kv.size(0) == 2 && kv.is_contiguous() && kv.device().is_cpu(),
              "kv: one contiguous layer of the pool, (2, kv_heads, blocks, block_size, D)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t Hkv = kv.size(1), num_blocks = kv.size(2), block_size = kv.size(3);
  TORCH_CHECK(kv.size(4) == D && D % 16 == 0, "head size: the pool's, a multiple of 16");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "query heads: a multiple of the kv heads");
  TORCH_CHECK(tables.scalar_type() == torch::kLong && tables.dim() == 2 && tables.size(0) == B &&
                  tables.is_contiguous(),
              "tables: contiguous int64 (B, blocks)");
  TORCH_CHECK(contexts.scalar_type() == torch::kLong && contexts.dim() == 1 &&
                  contexts.size(0) == B && contexts.is_contiguous(),
              "contexts: int64 (B,)");
  int dtype = -1, elem = 0;
  if (kv.scalar_type() == torch::kBFloat16) dtype = 0, elem = 2;
  if (kv.scalar_type() == torch::kHalf) dtype = 1, elem = 2;
  if (kv.scalar_type() == torch::kFloat) dtype = 2, elem = 4;
  TORCH_CHECK(dtype >= 0, "kv: bf16, fp16 or float32");
  const int64_t width = tables.size(1);
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* cp = contexts.data_ptr<int64_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; b++) {  // every block read must exist: checked once, here
    TORCH_CHECK(cp[b] >= 1 && cp[b] <= width * block_size, "context ", cp[b], " of sequence ", b,
                " needs more blocks than its table row holds");
    for (int64_t j = 0; j < (cp[b] + block_size - 1) / block_size; j++) {
      TORCH_CHECK(tp[b * width + j] >= 0 && tp[b * width + j] < num_blocks, "block id ",
                  tp[b * width + j], " outside the pool");
    }
    longest = std::max(longest, cp[b]);
  }
  const Kernels fns = kernels_for(isa);
  const auto* base = static_cast<const uint8_t*>(kv.data_ptr());
  const int64_t plane = Hkv * num_blocks * block_size * D * elem, head = plane / Hkv;
  const int64_t group = H / Hkv;
  const auto view = [&](int64_t item, const uint8_t* start) {  // item = b * H + h
    const int64_t b = item / H, h = item % H;
    return PagedHead{start + (h / group) * head, tp + b * width, block_size, cp[b], D};
  };
  auto out = torch::empty({B, H, D}, q.options());
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(longest);
    for (int64_t i = i0; i < i1; i++) {
      fns.attention(dtype, qp + i * D, view(i, base), view(i, base + plane),
                    static_cast<float>(scale), scratch.data(), op + i * D);
    }
  });
  return out;
}

// y (M, sum of N) bf16 = x (M, K) bf16 @ [w_0; w_1; ...] (N_i, K) bf16^T with AVX512-BF16,
// for M <= 16.
torch::Tensor linear_bf16_native_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws) {
#if defined(QWEN_AUDIO_X86)
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && x.dim() == 2, "x: bfloat16 (M, K)");
  TORCH_CHECK(x.size(1) % 32 == 0, "K must be a multiple of 32");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxInputRows, "1 to 16 input rows");
  const std::vector<torch::Tensor> no_scales(ws.size());
  int64_t K = 0;
  const Stacked st = stack_weights(ws, no_scales, kBf16, &K);
  TORCH_CHECK(x.size(1) == K, "shapes (M, K), (N, K)");
  const auto xc = x.contiguous();
  const int64_t M = xc.size(0), NT = st.total();
  auto y = torch::empty({M, NT}, xc.options());
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  at::parallel_for(0, NT, 16, [&](int64_t a, int64_t b) {
    st.for_range(a, b, [&](size_t i, int64_t n0, int64_t n1, int64_t col) {
      const auto* wp = static_cast<const uint16_t*>(st.w[i]);
      avx512_bf16::dispatch<kMaxInputRows>(static_cast<int>(M), xp, wp, yp + col, K, NT, n0, n1);
    });
  });
  return y;
#else
  TORCH_CHECK(false, "AVX512-BF16 kernels exist only on x86-64");
#endif
}

// y (M, N) bf16 = x (M, K) bf16 @ w (N, K) bf16^T with AVX512-BF16, for M <= 16.
torch::Tensor linear_bf16_native(const torch::Tensor& x, const torch::Tensor& w) {
  return linear_bf16_native_many(x, {w});
}

// y (M, N) bf16 = x (M, K) bf16 @ weight^T for int8/int4 weights in 8-row blocks with N a
// multiple of 32, on AMX (amx_usable): PackedLinear's bf16 prompts.
torch::Tensor amx_prompt_linear(const torch::Tensor& x, const torch::Tensor& w,
                                const torch::Tensor& s, int64_t format) {
#if defined(QWEN_AUDIO_AMX)
  TORCH_CHECK(amx_usable(kAvx512Bf16), "AMX-BF16 is not usable on this CPU");
  TORCH_CHECK(format == kQ4x8 || format == kQ8x8, "int8/int4 weights in 8-row blocks");
  const int64_t N = check_weight(w, s, format), K = inputs_of(w, format);
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && x.dim() == 2 && x.size(1) == K,
              "x: bfloat16 (M, K) with K = the weight's inputs");
  TORCH_CHECK(N % amx::kOutputs == 0 && K % kGroup == 0, "N a multiple of 32, K of 32");
  const int64_t M = x.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  const int64_t padded = (M + amx::kRowsPerPass - 1) / amx::kRowsPerPass * amx::kRowsPerPass;
  const auto xc = x.contiguous();
  auto xt = torch::empty({padded / 16, K / kGroup, 16, kGroup}, x.options());  // 1 KB tiles
  amx::lay_out_inputs(reinterpret_cast<const uint16_t*>(xc.data_ptr()), M, K, padded,
                      reinterpret_cast<uint16_t*>(xt.data_ptr()));
  const auto* xq = reinterpret_cast<const uint16_t*>(xt.data_ptr());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  const auto* wp = static_cast<const uint8_t*>(w.data_ptr());
  const uint16_t* sp = scales_ptr(s, format);
  const auto gemm = format == kQ4x8 ? amx::gemm<true> : amx::gemm<false>;
  at::parallel_for(0, N / amx::kOutputs, 1, [&](int64_t a, int64_t b) {
    gemm(xq, M, K, wp, sp, yp, N, a * amx::kOutputs, b * amx::kOutputs);
  });
  return y;
#else
  (void)x, (void)w, (void)s, (void)format;
  TORCH_CHECK(false, "AMX kernels exist only on x86-64 Linux");
#endif
}

std::vector<int64_t> compiled_isas() {
  std::vector<int64_t> isas;
#if defined(QWEN_AUDIO_X86)
  isas = {kAvx2, kAvx2Vnni, kAvx512, kAvx512Bf16};
#endif
#if defined(__aarch64__)
  isas = {kNeon};
#endif
  return isas;
}

namespace {

// model/quant.py's INT4_DIVISORS, in its order: the first is Q4_0's
constexpr float kInt4Divisors[] = {-8.0f, -9.0f, -8.75f, -8.5f, -8.25f, -7.75f, -7.25f, -7.0f};
constexpr int kInt4Candidates = sizeof(kInt4Divisors) / sizeof(kInt4Divisors[0]);

// The pairwise sum of 8 lanes: ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
inline double lanes_total(const double* lanes) {
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// Levels in [-8, 7] of one group under a scale, and their squared error summed in float64 in
// quant.py's order (8 lanes, j % 8, j rising, then pairwise), so the same candidate wins in both.
// Written 8 lanes at a time, so compilers vectorize it (NEON's frinti rounds as nearbyint).
// Fused multiply-adds, where the compiler forms them, change no bit: level * scale is exact in
// float32 (4 bits times fp16's 11), and a float32 difference squares exactly in float64.
inline double int4_levels(const float* g, float scale, float* levels) {
  const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < kGroup; i += 8) {
    float d[8];
    for (int l = 0; l < 8; l++) {
      float v = std::nearbyint(g[i + l] * inv);  // half to even, as torch.round
      v = v < -8.0f ? -8.0f : v;
      v = v > 7.0f ? 7.0f : v;
      levels[i + l] = v;
      d[l] = g[i + l] - v * scale;
    }
    for (int l = 0; l < 8; l++) lanes[l] += static_cast<double>(d[l]) * d[l];
  }
  return lanes_total(lanes);
}

// The group's first weight of the largest magnitude, signed (torch's argmax picks the first).
inline float group_extreme(const float* g) {
  float extreme = g[0], amax = std::fabs(g[0]);
  for (int j = 1; j < kGroup; j++) {
    if (std::fabs(g[j]) > amax) {
      amax = std::fabs(g[j]);
      extreme = g[j];
    }
  }
  return extreme;
}

// One int4 group: the scale among extreme / kInt4Divisors with the least squared error (strictly
// less: ties keep the earlier), as model/quant.py's quantize_int4.
void quantize_int4_group(const float* g, uint8_t* row, c10::Half* scale16) {
  const float extreme = group_extreme(g);
  float levels[kGroup];
  c10::Half scales[kInt4Candidates];
  int best = 0;
  double best_err = 0.0;
  for (int c = 0; c < kInt4Candidates; c++) {
    scales[c] = c10::Half(extreme / kInt4Divisors[c]);  // rounded first: the levels use it
    const double err = int4_levels(g, static_cast<float>(scales[c]), levels);
    best = c == 0 || err < best_err ? c : best;  // strictly less: ties keep the earlier
    best_err = c == 0 ? err : std::min(err, best_err);
  }
  int4_levels(g, static_cast<float>(scales[best]), levels);
  *scale16 = scales[best];
  for (int j = 0; j < kGroup / 2; j++) {
    const int lo = static_cast<int>(levels[j]) + 8;
    const int hi = static_cast<int>(levels[j + 16]) + 8;
    row[j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

}  // namespace

#if defined(QWEN_AUDIO_X86)
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
namespace avx2 {
// quantize_int4_group, 8 weights a vector: the same extreme (the first lane equal to the
// largest magnitude), the same fp16 scales (F16C rounds to nearest even, as c10::Half), the
// same levels and the same float64 error (its 8 lanes are the two 4-double accumulators).
// The 8 candidate scales and their reciprocals are one vector each.
static_assert(kInt4Candidates == 8, "one vector of candidate scales");

// Levels of 32 weights (4 vectors) under one scale, and the 8 lanes of their squared error.
inline double int4_levels(const __m256* x, __m256 s, __m256 inv, __m256* v) {
  constexpr int kEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // as nearbyint
  const __m256 lo = _mm256_set1_ps(-8.0f), hi = _mm256_set1_ps(7.0f);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  for (int i = 0; i < 4; i++) {
    v[i] = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(x[i], inv), kEven)));
    const __m256 d = _mm256_sub_ps(x[i], _mm256_mul_ps(v[i], s));
    const __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(d));
    const __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1));
    acc0 = _mm256_add_pd(acc0, _mm256_mul_pd(d0, d0));
    acc1 = _mm256_add_pd(acc1, _mm256_mul_pd(d1, d1));
  }
  double lanes[8];
  _mm256_storeu_pd(lanes, acc0);
  _mm256_storeu_pd(lanes + 4, acc1);
  return lanes_total(lanes);
}

void quantize_int4_group(const float* g, uint8_t* row, c10::Half* scale16) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 x[4], mag[4];
  for (int i = 0; i < 4; i++) {
    x[i] = _mm256_loadu_ps(g + 8 * i);
    mag[i] = _mm256_andnot_ps(sign, x[i]);
  }
  __m256 m = _mm256_max_ps(_mm256_max_ps(mag[0], mag[1]), _mm256_max_ps(mag[2], mag[3]));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  const __m256 amax = _mm256_set1_ps(_mm_cvtss_f32(h));
  uint32_t at = 0;
  for (int i = 0; i < 4; i++) {
    const auto eq = _mm256_movemask_ps(_mm256_cmp_ps(mag[i], amax, _CMP_EQ_OQ));
    at |= static_cast<uint32_t>(eq) << (8 * i);
  }
  const float extreme = g[at != 0 ? __builtin_ctz(at) : 0];

  constexpr int kEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m128i bits = _mm256_cvtps_ph(
      _mm256_div_ps(_mm256_set1_ps(extreme), _mm256_loadu_ps(kInt4Divisors)), kEven);
  const __m256 scale = _mm256_cvtph_ps(bits);
  const __m256 nonzero = _mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_NEQ_UQ);
  const __m256 inv = _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0f), scale));
  alignas(32) float scales[8], invs[8];
  alignas(16) uint16_t scale_bits[8];
  _mm256_store_ps(scales, scale);
  _mm256_store_ps(invs, inv);
  _mm_store_si128(reinterpret_cast<__m128i*>(scale_bits), bits);
  __m256 v[4];
  int best = 0;
  double best_err = int4_levels(x, _mm256_set1_ps(scales[0]), _mm256_set1_ps(invs[0]), v);
  for (int c = 1; c < kInt4Candidates; c++) {
    const double err = int4_levels(x, _mm256_set1_ps(scales[c]), _mm256_set1_ps(invs[c]), v);
    best = err < best_err ? c : best;  // strictly less: ties keep the earlier
    best_err = std::min(err, best_err);
  }
  int4_levels(x, _mm256_set1_ps(scales[best]), _mm256_set1_ps(invs[best]), v);
  *scale16 = c10::Half(scale_bits[best], c10::Half::from_bits());
  // byte j: weight j's nibble low, weight j + 16's high (vectors 0, 1 low; 2, 3 high)
  const __m256 eight = _mm256_set1_ps(8.0f);
  __m256i nib[4];
  for (int i = 0; i < 4; i++) nib[i] = _mm256_cvtps_epi32(_mm256_add_ps(v[i], eight));
  const __m256i a = _mm256_or_si256(nib[0], _mm256_slli_epi32(nib[2], 4));  // bytes 0-7
  const __m256i b = _mm256_or_si256(nib[1], _mm256_slli_epi32(nib[3], 4));  // bytes 8-15
  const __m128i a16 = _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  const __m128i b16 = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(row), _mm_packus_epi16(a16, b16));
}
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace {

// One row range of `quantize`: exactly model/quant.py's arithmetic (float32 division for int8,
// the reciprocal's product for int4, round half to even, the scale rounded to fp16 before it is
// used), so both give the same bytes.
template <typename T>
void quantize_rows(const T* w, int64_t K, int64_t n0, int64_t n1, bool int4, bool avx2, uint8_t* q,
                   c10::Half* scales) {
  const int64_t groups = K / kGroup;
  float g[kGroup];
  for (int64_t n = n0; n < n1; n++) {
    for (int64_t gi = 0; gi < groups; gi++) {
      const T* src = w + n * K + gi * kGroup;
      for (int j = 0; j < kGroup; j++) g[j] = static_cast<float>(src[j]);
      if (int4) {
        uint8_t* row = q + n * (K / 2) + gi * (kGroup / 2);
#if defined(QWEN_AUDIO_X86)
        if (avx2) {
          avx2::quantize_int4_group(g, row, scales + n * groups + gi);
          continue;
        }
#endif
        quantize_int4_group(g, row, scales + n * groups + gi);
        continue;
      }
      float amax = 0.0f;
      for (int j = 0; j < kGroup; j++) amax = std::max(amax, std::fabs(g[j]));
      const c10::Half scale16(amax / 127.0f);
      const float scale = static_cast<float>(scale16);
      scales[n * groups + gi] = scale16;
      auto* row = reinterpret_cast<int8_t*>(q) + n * K + gi * kGroup;
      for (int j = 0; j < kGroup; j++) {
        const float v = scale > 0.0f ? std::nearbyint(g[j] / scale) : 0.0f;
        row[j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
  }
}

}  // namespace

// (N, K) float weight -> packed (int8 (N, K) or int4 (N, K/2)) and fp16 scales (N, K/32).
// `isa` only picks how the int4 scale search runs (AVX2 or plain C++): the bytes are the same.
std::vector<torch::Tensor> quantize(const torch::Tensor& w, int64_t format, int64_t isa) {
  TORCH_CHECK(format == kQ8 || format == kQ4, "quantize: format must be int8 or int4");
  TORCH_CHECK(w.dim() == 2 && w.size(1) % kGroup == 0, "quantize: (N, K) with K % 32 == 0");
  const auto wc = w.contiguous();
  const int64_t N = wc.size(0), K = wc.size(1);
  const bool int4 = format == kQ4;
  const bool avx2 = isa != kNone && isa != kNeon;  // every x86-64 set here includes AVX2
#if !defined(QWEN_AUDIO_X86)
  TORCH_CHECK(!avx2, "quantize: AVX2 exists only on x86-64");
#endif
  auto q = torch::empty({N, int4 ? K / 2 : K}, torch::dtype(int4 ? torch::kByte : torch::kChar));
  auto scales = torch::empty({N, K / kGroup}, torch::dtype(torch::kHalf));
  auto* qp = reinterpret_cast<uint8_t*>(q.data_ptr());
  auto* sp = scales.data_ptr<c10::Half>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    switch (wc.scalar_type()) {
      case torch::kBFloat16:
        return quantize_rows(wc.data_ptr<c10::BFloat16>(), K, n0, n1, int4, avx2, qp, sp);
      case torch::kHalf:
        return quantize_rows(wc.data_ptr<c10::Half>(), K, n0, n1, int4, avx2, qp, sp);
      case torch::kFloat:
        return quantize_rows(wc.data_ptr<float>(), K, n0, n1, int4, avx2, qp, sp);
      default: TORCH_CHECK(false, "quantize: bf16, fp16 or float32 weights");
    }
  });
  return {q, scales};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The heavy calls release the GIL, as PyTorch's own operators do: the server's event loop
  // and other Python threads run while a step multiplies (the arguments are converted before
  // and the result after, with the GIL held)
  const auto nogil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("quantize", &quantize, "int8/int4 groups of a float weight, as model/quant.py", nogil);
  m.def("linear", &linear, "x (M, K) float32 @ packed weight^T, M <= 16 unless int_inputs_path",
        nogil);
  m.def("int_inputs_path", &int_inputs_path, "whether linear takes any number of rows");
  m.def("prefers_row_blocks", &prefers_row_blocks, "whether int8/int4 go in 8-row blocks here");
  m.def("dequantize", &dequantize, "float32 (or bf16) rows [n0, n1) of a packed weight",
        py::arg("w"), py::arg("s"), py::arg("format"), py::arg("isa"), py::arg("n0"),
        py::arg("n1"), py::arg("bf16") = false, py::arg("into") = py::none(), nogil);
  m.def("linear_many", &linear_many, "linear over several weights of one input, side by side",
        nogil);
  m.def("linear_bf16_native", &linear_bf16_native, "bf16 x @ bf16 w^T (AVX512-BF16)", nogil);
  m.def("linear_bf16_native_many", &linear_bf16_native_many, "linear_bf16_native, stacked",
        nogil);
  m.def("paged_decode_attention", &paged_decode_attention,
        "one new token per sequence against its keys and values in the paged pool", nogil);
  m.def("amx_usable", &amx_usable, "whether bf16 prompts may meet int8/int4 blocks on AMX");
  m.def("amx_prompt_linear", &amx_prompt_linear, "bf16 x @ int8/int4 blocks^T on AMX", nogil);
  m.def("compiled_isas", &compiled_isas, "instruction sets in this build");
  register_decoder_stack(m);
}
