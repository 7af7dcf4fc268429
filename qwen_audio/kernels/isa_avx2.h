// Included by cpu_kernels.cpp inside namespace avx2 under its target options: the vector
// interface simd_body.h is written against (8 floats a register, AVX2+FMA+F16C).
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
  static inline F max(F a, F b) { return _mm256_max_ps(a, b); }
  static inline F round(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline F pow2(F n) {  // 2^n for whole n in [-126, 127]: n + 127 is the exponent field
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
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
  static inline void store_bf16(uint16_t* p, F v) {  // rounded to nearest even, as PyTorch
    const __m256i b = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
    const __m256i top = _mm256_srli_epi32(_mm256_add_epi32(b, bias), 16);  // each < 2^16
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(top),
                                            _mm256_extracti128_si256(top, 1));
    _mm_storeu_si128((__m128i*)p, packed);
  }
  static inline F from_bytes(__m128i b) {  // the low 8 signed bytes -> 8 floats
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  using B16 = __m128i;  // 16 bytes of int8/int4 weights
  static inline B16 load16(const void* p) { return _mm_loadu_si128((const __m128i*)p); }
  static inline B16 words16(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {  // in registers
    return _mm_set_epi32((int)d, (int)c, (int)b, (int)a);
  }
  static inline void q8(const int8_t* p, F out[4]) { q8_of(load16(p), load16(p + 16), out); }
  static inline void q4(const uint8_t* p, F out[4]) { q4_of(load16(p), out); }
  static inline void q8_of(B16 a, B16 b, F out[4]) {
    out[0] = from_bytes(a);
    out[1] = from_bytes(_mm_srli_si128(a, 8));
    out[2] = from_bytes(b);
    out[3] = from_bytes(_mm_srli_si128(b, 8));
  }
  static inline void q4_of(B16 b, F out[4]) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, mask), eight);  // weights 0..15
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight);  // 16..31
    out[0] = from_bytes(lo);
    out[1] = from_bytes(_mm_srli_si128(lo, 8));
    out[2] = from_bytes(hi);
    out[3] = from_bytes(_mm_srli_si128(hi, 8));
  }
};
