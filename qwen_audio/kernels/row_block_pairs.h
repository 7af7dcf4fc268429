// Two 8-row blocks side by side in 512-bit registers, for AVX512-VNNI: run j of block b and of
// block b + 1 fill the two halves of one register, so each `vpdpbusd` makes 16 output rows'
// sums where row_blocks_body.h's 256-bit one makes 8, and the unpacking, scale and FMA of a
// group are shared by 16 rows. One input row is bound by memory either way; with several it is
// the instructions that bound the blocks (7B int4 shapes on a 2-core Sapphire Rapids, 8 input
// rows: 14.3 GB/s of weights with 256-bit registers).
//
// int8 has no 512-bit `vpsign`, so instead of moving the weights' sign onto the inputs it adds
// 128 to every weight (an XOR of the top bit) and takes 128 x the inputs' sum back off, as int4
// takes off its zero point. The integer sums are exact either way, and a row's float sums are
// one FMA per group in group order as in the 256-bit blocks: the same bits, whichever kernel
// and whatever the number of input rows (batched == single).
//
// Included by cpu_kernels.cpp inside namespace avx512_vnni_blocks, after row_blocks_body.h,
// whose RowBlocks takes a last block left without a partner.
template <bool kQ4>
struct RowBlockPairs {
  static constexpr int64_t kGroupBytes = RowBlocks<kQ4>::kGroupBytes;
  static constexpr int kInputRows = 8;  // sums + weights + temporaries fit 32 registers

  static inline __m512i pair_run(const uint8_t* a, const uint8_t* b) {
    const __m256i low = _mm256_loadu_si256((const __m256i*)a);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), _mm256_loadu_si256((const __m256i*)b), 1);
  }

  // the 16 scales of group g of a pair, block b's in lanes 0..7, block b + 1's in 8..15
  static inline __m512 pair_scales(const uint16_t* scales0, const uint16_t* scales1, int64_t g) {
    const __m256i halves = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(scales0 + g * 8))),
        _mm_loadu_si128((const __m128i*)(scales1 + g * 8)), 1);
    return _mm512_cvtph_ps(halves);
  }

  static inline __m512i broadcast_word(const int8_t* p) {
    int32_t word;
    std::memcpy(&word, p, sizeof(word));
    return _mm512_set1_epi32(word);
  }

  // Output rows [n, n + 16) of the blocks at `blk` and `blk + block_bytes`, scales alike.
  template <int MR>
  static void pair(const uint8_t* blk, int64_t block_bytes, const uint16_t* scales,
                   const QuantizedRows& x, int64_t K, float* y, int64_t ldy) {
    const int64_t groups = K / kGroup;
    const uint8_t* blk1 = blk + block_bytes;
    const uint16_t* scales1 = scales + 8 * groups;
    const __m512i low = _mm512_set1_epi8(0x0F), top_bit = _mm512_set1_epi8((char)0x80);
    // int4's zero point is 8 x the inputs' sum, which QuantizedRows holds; int8's 128 x is 16 x it
    constexpr int32_t kZeroTimes = kQ4 ? 1 : 16;
    __m512 acc[MR];
    for (int m = 0; m < MR; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
      const uint8_t* runs0 = blk + g * kGroupBytes;
      const uint8_t* runs1 = blk1 + g * kGroupBytes;
      for (int64_t line = 0; line < kGroupBytes; line += 64) {
        _mm_prefetch((const char*)(runs0 + kBlockReadAhead + line), _MM_HINT_T1);
        _mm_prefetch((const char*)(runs1 + kBlockReadAhead + line), _MM_HINT_T1);
      }
      __m512i w[8];  // int4: nibbles (w[2j] low, w[2j + 1] high of run j); int8: run j + 128
      if constexpr (kQ4) {
        for (int j = 0; j < 4; j++) {
          const __m512i run = pair_run(runs0 + j * 32, runs1 + j * 32);
          w[2 * j] = _mm512_and_si512(run, low);
          w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(run, 4), low);
        }
      } else {
        for (int j = 0; j < 8; j++)
          w[j] = _mm512_xor_si512(pair_run(runs0 + j * 32, runs1 + j * 32), top_bit);
      }
      const __m512 wscale = pair_scales(scales, scales1, g);
      for (int m = 0; m < MR; m++) {
        const int8_t* xg = x.q + m * K + g * kGroup;
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();  // two chains
        if constexpr (kQ4) {
          for (int j = 0; j < 4; j++) {
            lo = _mm512_dpbusd_epi32(lo, w[2 * j], broadcast_word(xg + 4 * j));
            hi = _mm512_dpbusd_epi32(hi, w[2 * j + 1], broadcast_word(xg + 16 + 4 * j));
          }
        } else {
          for (int j = 0; j < 8; j += 2) {
            lo = _mm512_dpbusd_epi32(lo, w[j], broadcast_word(xg + 4 * j));
            hi = _mm512_dpbusd_epi32(hi, w[j + 1], broadcast_word(xg + 4 * j + 4));
          }
        }
        const __m512i zero = _mm512_set1_epi32(kZeroTimes * x.zero[m * groups + g]);
        const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(lo, hi), zero);
        const __m512 scale = _mm512_mul_ps(wscale, _mm512_set1_ps(x.d[m * groups + g]));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[m]);
      }
    }
    for (int m = 0; m < MR; m++) _mm512_storeu_ps(y + m * ldy, acc[m]);
  }

  // Output rows [n0, n1), both multiples of 8: pairs of blocks, each pair read once per call
  // while every group of input rows passes over it (16 rows of 11008 int8 weights: 172 KB,
  // from L2 after the first pass); a last lone block goes to the 256-bit kernel.
  static void gemv(const uint8_t* w, const uint16_t* s, const QuantizedRows& x, int64_t M,
                   int64_t K, float* y, int64_t N, int64_t n0, int64_t n1) {
    const int64_t groups = K / kGroup, row_bytes = kQ4 ? K / 2 : K;
    int64_t n = n0;
    for (; n + 16 <= n1; n += 16) {
      const uint8_t* blk = w + n * row_bytes;
      const uint16_t* scales = s + n * groups;
      for (int64_t m0 = 0; m0 < M; m0 += kInputRows) {
        const QuantizedRows xm = x.from_row(m0, K);
        float* yb = y + m0 * N + n;
        const int64_t b = 8 * row_bytes;
        switch (std::min<int64_t>(M - m0, kInputRows)) {
          case 1: pair<1>(blk, b, scales, xm, K, yb, N); break;
          case 2: pair<2>(blk, b, scales, xm, K, yb, N); break;
          case 3: pair<3>(blk, b, scales, xm, K, yb, N); break;
          case 4: pair<4>(blk, b, scales, xm, K, yb, N); break;
          case 5: pair<5>(blk, b, scales, xm, K, yb, N); break;
          case 6: pair<6>(blk, b, scales, xm, K, yb, N); break;
          case 7: pair<7>(blk, b, scales, xm, K, yb, N); break;
          default: pair<8>(blk, b, scales, xm, K, yb, N); break;
        }
      }
    }
    if (n < n1) RowBlocks<kQ4>::gemv(w, s, x, M, K, y, N, n, n1);
  }
};
