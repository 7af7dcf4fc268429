// Included by cpu_kernels.cpp inside namespace avx512 under its target options: the vector
// interface simd_body.h is written against (16 floats a register, AVX-512 F/BW/VL/DQ).
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
  static inline F max(F a, F b) { return _mm512_max_ps(a, b); }
  static inline F round(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline F pow2(F n) {  // 2^n for whole n in [-126, 127]: n + 127 is the exponent field
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static inline float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static inline float half(uint16_t h) { return _cvtsh_ss(h); }
  static inline F bf16(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static inline F fp16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  }
  static inline void store_bf16(uint16_t* p, F v) {  // rounded to nearest even, as PyTorch
    const __m512i b = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
    const __m512i top = _mm512_srli_epi32(_mm512_add_epi32(b, bias), 16);
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(top));
  }
  static inline F from_bytes(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
  using B16 = __m128i;  // 16 bytes of int8/int4 weights
  static inline B16 load16(const void* p) { return _mm_loadu_si128((const __m128i*)p); }
  static inline B16 words16(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {  // in registers
    return _mm_set_epi32((int)d, (int)c, (int)b, (int)a);
  }
  static inline void q8_of(B16 lo, B16 hi, F out[2]) {
    out[0] = from_bytes(lo);
    out[1] = from_bytes(hi);
  }
  static inline void q4_of(B16 b, F out[2]) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    out[0] = from_bytes(_mm_sub_epi8(_mm_and_si128(b, mask), eight));
    out[1] = from_bytes(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight));
  }
  static inline void q8(const int8_t* p, F out[2]) { q8_of(load16(p), load16(p + 16), out); }
  static inline void q4(const uint8_t* p, F out[2]) { q4_of(load16(p), out); }
};
