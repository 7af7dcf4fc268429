// int8/int4 weights times int8-rounded inputs, the weights repacked in blocks of 8 output rows
// (kQ4x8 / kQ8x8; llama.cpp repacks Q4_0 likewise on these CPUs). In a block, group g's 8 rows
// are stored as runs of 32 bytes, run j holding bytes 4j..4j+3 of rows 0..7 in turn: 4 runs for
// int4 (their weights 4j..4j+3 in the low nibbles, 16+4j..16+4j+3 in the high ones), 8 for int8
// (weights 4j..4j+3); the block's scales follow the same order, 8 per group. Each 32-bit lane
// of a run belongs to one output row, so its 4 inputs are one broadcast word, a group's
// products add up in integer lanes, and a group costs one conversion and one FMA for 8
// outputs, where the row layout pays them for every output. int4 on 2 AVX2 cores, 7B shapes:
// 2x the row kernel's prefill rate, 2.5x with 4 input rows, and with the read-ahead below a
// faster read than the row layout's when decoding one row. int4's zero point is subtracted in
// integers, so a row's float sums are one FMA per group in group order whatever the number of
// input rows (batched == single).
//
// Included by cpu_kernels.cpp inside namespace avx2 (ROW_BLOCKS_VNNI 0: `vpmaddubsw`),
// avx2_vnni and avx512_vnni_blocks (ROW_BLOCKS_VNNI 1: `vpdpbusd` on 256-bit registers, its
// VEX form from AVX-VNNI or its EVEX form from AVX512-VNNI + VL, named by ROW_BLOCKS_DPBUSD)
// under their target options; QuantizedRows and kWeightRowChunk are avx2's. The integer sums
// are exact either way: the same bits.
inline __m256i broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm256_set1_epi32(word);
}

// int4: the 8 rows' sums of one group, w[2j] (nibbles 0..15) with inputs 4j..4j+3 and
// w[2j + 1] with 16+4j..16+4j+3. Without VNNI they add up in 16-bit lanes: 8 products of at
// most 2 x 15 x 127 each, no overflow.
inline __m256i q4_group_dot(const __m256i w[8], const int8_t* xg) {
#if ROW_BLOCKS_VNNI
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();  // two dependency chains
  for (int j = 0; j < 4; j++) {
    lo = ROW_BLOCKS_DPBUSD(lo, w[2 * j], broadcast_word(xg + 4 * j));
    hi = ROW_BLOCKS_DPBUSD(hi, w[2 * j + 1], broadcast_word(xg + 16 + 4 * j));
  }
  return _mm256_add_epi32(lo, hi);
#else
  __m256i sum = _mm256_setzero_si256();
  for (int j = 0; j < 4; j++) {
    sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(w[2 * j], broadcast_word(xg + 4 * j)));
    sum = _mm256_add_epi16(sum,
                           _mm256_maddubs_epi16(w[2 * j + 1], broadcast_word(xg + 16 + 4 * j)));
  }
  return _mm256_madd_epi16(sum, _mm256_set1_epi16(1));
#endif
}

// int8: the 8 rows' sums of one group; magnitude[j] = |run j|, whose sign moves onto the
// inputs (the unsigned operand must be the weights: 2 x 127 x 127 per 16-bit pair fits).
inline __m256i q8_group_dot(const __m256i magnitude[8], const uint8_t* runs, const int8_t* xg) {
#if ROW_BLOCKS_VNNI
  __m256i even = _mm256_setzero_si256(), odd = _mm256_setzero_si256();
  for (int j = 0; j < 8; j += 2) {
    const __m256i w0 = _mm256_loadu_si256((const __m256i*)(runs + j * 32));
    const __m256i w1 = _mm256_loadu_si256((const __m256i*)(runs + j * 32 + 32));
    const __m256i x0 = _mm256_sign_epi8(broadcast_word(xg + 4 * j), w0);
    const __m256i x1 = _mm256_sign_epi8(broadcast_word(xg + 4 * j + 4), w1);
    even = ROW_BLOCKS_DPBUSD(even, magnitude[j], x0);
    odd = ROW_BLOCKS_DPBUSD(odd, magnitude[j + 1], x1);
  }
  return _mm256_add_epi32(even, odd);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i sum = _mm256_setzero_si256();
  for (int j = 0; j < 8; j++) {
    const __m256i w = _mm256_loadu_si256((const __m256i*)(runs + j * 32));
    const __m256i pairs =
        _mm256_maddubs_epi16(magnitude[j], _mm256_sign_epi8(broadcast_word(xg + 4 * j), w));
    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, ones));
  }
  return sum;
#endif
}

// Bytes requested ahead of use: 4 KB. Without it, decoding one row read ~10% slower than the
// row layout (int4); with it, 5-20% faster on the 2-core VM (2 KB: even; 8 KB: +3-8%). Into L2
// (prefetcht1), which leaves L1's fill buffers to the loads: on a Sapphire Rapids VM 24.6 GB/s
// against 23.2 into L1 and 19.2 without (7B int4 shapes, 1 row, 4 KiB pages; 2-16 KB alike).
constexpr int64_t kBlockReadAhead = 4096;

// Static members, so that a call never finds the other instruction set's copy by the
// arguments' namespace (QuantizedRows is avx2's in both).
template <bool kQ4>
struct RowBlocks {
  static constexpr int64_t kGroupBytes = kQ4 ? 128 : 256;  // one group of a block's 8 rows
  static constexpr int kInputRows = kQ4 ? 6 : 4;  // per pass over a block: sums + weights fit

  template <int MR>
  static void block(const uint8_t* blk, const uint16_t* scales, const QuantizedRows& x, int64_t K,
                    float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[MR];
    for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
      const uint8_t* runs = blk + g * kGroupBytes;
      for (int64_t line = 0; line < kGroupBytes; line += 64)
        _mm_prefetch((const char*)(runs + kBlockReadAhead + line), _MM_HINT_T1);
      __m256i w[8];  // int4: nibbles (w[2j] low, w[2j + 1] high of run j); int8: |run j|
      if constexpr (kQ4) {
        for (int j = 0; j < 4; j++) {
          const __m256i run = _mm256_loadu_si256((const __m256i*)(runs + j * 32));
          w[2 * j] = _mm256_and_si256(run, low);
          w[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(run, 4), low);
        }
      } else {
        for (int j = 0; j < 8; j++)
          w[j] = _mm256_abs_epi8(_mm256_loadu_si256((const __m256i*)(runs + j * 32)));
      }
      const __m256 wscale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(scales + g * 8)));
      for (int m = 0; m < MR; m++) {
        const int8_t* xg = x.q + m * K + g * kGroup;
        __m256i dot;
        if constexpr (kQ4) {
          dot = _mm256_sub_epi32(q4_group_dot(w, xg), _mm256_set1_epi32(x.zero[m * groups + g]));
        } else {
          dot = q8_group_dot(w, runs, xg);
        }
        const __m256 scale = _mm256_mul_ps(wscale, _mm256_broadcast_ss(x.d + m * groups + g));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[m]);
      }
    }
    for (int m = 0; m < MR; m++) _mm256_storeu_ps(y + m * ldy, acc[m]);
  }

  // Output rows [n0, n1), both multiples of 8: 16 weight rows at a time, as int_gemv.
  static void gemv(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t M,
                   int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
    const int64_t groups = K / kGroup, row_bytes = kQ4 ? K / 2 : K;
    for (int64_t c0 = n0; c0 < n1; c0 += kWeightRowChunk) {
      const int64_t c1 = std::min(n1, c0 + kWeightRowChunk);
      for (int64_t m0 = 0; m0 < M; m0 += kInputRows) {
        const QuantizedRows xm = x.from_row(m0, K);
        for (int64_t n = c0; n < c1; n += 8) {
          const uint8_t* blk = w + n * row_bytes;
          const uint16_t* scales = s + n * groups;
          float* yb = y + m0 * N + n;
          switch (std::min<int64_t>(M - m0, kInputRows)) {
            case 1: block<1>(blk, scales, xm, K, yb, N); break;
            case 2: block<2>(blk, scales, xm, K, yb, N); break;
            case 3: block<3>(blk, scales, xm, K, yb, N); break;
            case 4: block<4>(blk, scales, xm, K, yb, N); break;
            case 5: if constexpr (kInputRows >= 5) block<5>(blk, scales, xm, K, yb, N); break;
            default: if constexpr (kInputRows >= 6) block<6>(blk, scales, xm, K, yb, N); break;
          }
        }
      }
    }
  }
};
