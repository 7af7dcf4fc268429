// Included by cpu_kernels.cpp inside namespace neon under its target options: the vector
// interface simd_body.h is written against (4 floats a register, ARMv8 Advanced SIMD).
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
  static inline F max(F a, F b) { return vmaxq_f32(a, b); }
  static inline F round(F v) { return vrndnq_f32(v); }
  static inline F pow2(F n) {  // 2^n for whole n in [-126, 127]: n + 127 is the exponent field
    const int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
  }
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
  static inline void store_bf16(uint16_t* p, F v) {  // rounded to nearest even, as PyTorch
    const uint32x4_t b = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
    vst1_u16(p, vshrn_n_u32(vaddq_u32(b, vaddq_u32(odd, vdupq_n_u32(0x7FFF))), 16));
  }
  static inline void from_bytes(int8x16_t b, F out[4]) {  // 16 signed bytes -> 16 floats
    const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    out[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
    out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    out[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
  }
  using B16 = uint8x16_t;  // 16 bytes of int8/int4 weights
  static inline B16 load16(const void* p) { return vld1q_u8(static_cast<const uint8_t*>(p)); }
  static inline B16 words16(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    const uint32_t words[4] = {a, b, c, d};
    return vreinterpretq_u8_u32(vld1q_u32(words));
  }
  static inline void q8_of(B16 lo, B16 hi, F out[8]) {
    from_bytes(vreinterpretq_s8_u8(lo), out);
    from_bytes(vreinterpretq_s8_u8(hi), out + 4);
  }
  static inline void q8(const int8_t* p, F out[8]) { q8_of(load16(p), load16(p + 16), out); }
  static inline void q4(const uint8_t* p, F out[8]) { q4_of(load16(p), out); }
  static inline void q4_of(B16 b, F out[8]) {
    const int8x16_t eight = vdupq_n_s8(8);
    from_bytes(vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), eight), out);
    from_bytes(vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight), out + 4);
  }
};
