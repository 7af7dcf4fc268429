// int4 weights times int8-rounded inputs, the weights repacked in blocks of 8 output rows (kQ4x8; llama.cpp repacks Q4_0 likewise on
// these CPUs). In a block, group g's 8 x 16 bytes are 4 runs of 32 bytes, run j holding bytes
// 4j..4j+3 of rows 0..7 in turn (their weights 4j..4j+3 in the low nibbles, 16+4j..16+4j+3 in
// the high ones); the block's scales follow the same order, 8 per group. Each 32-bit lane of a
// run belongs to one output row, so its 4 inputs are one broadcast word, a group's products
// add up in 16-bit lanes (8 of at most 2 x 15 x 127: no overflow), and a group costs one
// conversion and one FMA for 8 outputs, where the row layout pays them for every output: 2x the
// row kernel's prefill rate on 2 AVX2 cores, 2.5x with 4 input rows, and with the read-ahead
// below a faster read than the row layout's when decoding one row. The zero
// point is subtracted in integers, so a row's float sums are one FMA per group in group order
// whatever the number of input rows (batched == single).
//
// Included by cpu_kernels.cpp inside namespace avx2 (Q4X8_VNNI 0: `vpmaddubsw`) and avx2_vnni
// (Q4X8_VNNI 1: `vpdpbusd`) under their target options; QuantizedRows and kWeightRowChunk are
// avx2's.
inline __m256i broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm256_set1_epi32(word);
}

// The 8 rows' sums of one group: w[2j] with inputs 4j..4j+3, w[2j + 1] with 16+4j..16+4j+3.
inline __m256i group_dot(const __m256i w[8], const int8_t* xg) {
#if Q4X8_VNNI
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();  // two dependency chains
  for (int j = 0; j < 4; j++) {
    lo = _mm256_dpbusd_avx_epi32(lo, w[2 * j], broadcast_word(xg + 4 * j));
    hi = _mm256_dpbusd_avx_epi32(hi, w[2 * j + 1], broadcast_word(xg + 16 + 4 * j));
  }
  return _mm256_add_epi32(lo, hi);
#else
  __m256i sum = _mm256_setzero_si256();
  for (int j = 0; j < 4; j++) {
    sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(w[2 * j], broadcast_word(xg + 4 * j)));
    sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(w[2 * j + 1], broadcast_word(xg + 16 + 4 * j)));
  }
  return _mm256_madd_epi16(sum, _mm256_set1_epi16(1));
#endif
}

// Groups read ahead of use: 4 KB. Without it decoding (one input row) read ~10% slower than the
// row layout; with it, 5-20% faster on the 2-core VM (16 groups: even; 64: +3-8%).
constexpr int64_t kQ4x8Ahead = 32;

// Static members, so that a call never finds the other instruction set's copy by the
// arguments' namespace (QuantizedRows is avx2's in both).
struct Q4x8 {
template <int MR>
static void block(const uint8_t* block, const uint16_t* scales, const QuantizedRows& x, int64_t K,
                  float* y, int64_t ldy) {
  const int64_t groups = K / kGroup;
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[MR];
  for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    _mm_prefetch((const char*)(block + (g + kQ4x8Ahead) * 128), _MM_HINT_T0);
    _mm_prefetch((const char*)(block + (g + kQ4x8Ahead) * 128 + 64), _MM_HINT_T0);
    __m256i w[8];  // w[2j]: weights 4j..4j+3 of the 8 rows; w[2j + 1]: 16+4j..16+4j+3
    for (int j = 0; j < 4; j++) {
      const __m256i run = _mm256_loadu_si256((const __m256i*)(block + g * 128 + j * 32));
      w[2 * j] = _mm256_and_si256(run, low);
      w[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(run, 4), low);
    }
    const __m256 wscale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(scales + g * 8)));
    for (int m = 0; m < MR; m++) {
      const __m256i dot = _mm256_sub_epi32(group_dot(w, x.q + m * K + g * kGroup),
                                           _mm256_set1_epi32(x.zero[m * groups + g]));
      const __m256 scale = _mm256_mul_ps(wscale, _mm256_broadcast_ss(x.d + m * groups + g));
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[m]);
    }
  }
  for (int m = 0; m < MR; m++) _mm256_storeu_ps(y + m * ldy, acc[m]);
}

static constexpr int64_t kInputRows = 6;  // input rows per pass over a block (6 sums, 8 weights)

// Output rows [n0, n1), both multiples of 8: 16 weight rows at a time, as int_gemv.
static void gemv(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t M,
                 int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t groups = K / kGroup;
  for (int64_t c0 = n0; c0 < n1; c0 += kWeightRowChunk) {
    const int64_t c1 = std::min(n1, c0 + kWeightRowChunk);
    for (int64_t m0 = 0; m0 < M; m0 += kInputRows) {
      const QuantizedRows xm = x.from_row(m0, K);
      for (int64_t n = c0; n < c1; n += 8) {
        const uint8_t* blk = w + n * (K / 2);
        const uint16_t* scales = s + n * groups;
        float* yb = y + m0 * N + n;
        switch (std::min(M - m0, kInputRows)) {
          case 1: Q4x8::block<1>(blk, scales, xm, K, yb, N); break;
          case 2: Q4x8::block<2>(blk, scales, xm, K, yb, N); break;
          case 3: Q4x8::block<3>(blk, scales, xm, K, yb, N); break;
          case 4: Q4x8::block<4>(blk, scales, xm, K, yb, N); break;
          case 5: Q4x8::block<5>(blk, scales, xm, K, yb, N); break;
          default: Q4x8::block<6>(blk, scales, xm, K, yb, N); break;
        }
      }
    }
  }
}
};
