// The ARM64 (NEON) kernels against a scalar reference, without torch: built by
// tests/test_kernels_arm.py with an aarch64 compiler and run natively or under qemu-aarch64.
// Exit status 0 and "ok" when every product, dequantized weight and attention output matches.
#include <arm_neon.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common.h"

namespace neon {
#include "isa_neon.h"
#define KMAXROWS 4
#include "simd_body.h"
#undef KMAXROWS
}  // namespace neon

namespace {

uint16_t to_half(float v) {
  __fp16 h = static_cast<__fp16>(v);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

float from_half(uint16_t bits) {
  __fp16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

uint16_t round_bf16(float v) {  // to nearest even, as PyTorch rounds (no NaN here)
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

uint16_t to_bf16(float v) {  // truncation is enough for test data
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>(bits >> 16);
}

float from_bf16(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

struct Weight {
  int format;
  int64_t N, K;
  std::vector<uint16_t> w16;
  std::vector<int8_t> q8;
  std::vector<uint8_t> q4;
  std::vector<uint16_t> scales;
  const void* data() const {
    if (format == kQ8) return q8.data();
    if (format == kQ4) return q4.data();
    return w16.data();
  }
  float at(int64_t n, int64_t k) const {  // the reference dequantization
    const int64_t G = K / kGroup;
    switch (format) {
      case kBf16: return from_bf16(w16[n * K + k]);
      case kFp16: return from_half(w16[n * K + k]);
      case kQ8: return q8[n * K + k] * from_half(scales[n * G + k / kGroup]);
      default: {
        const int64_t g = k / kGroup, j = k % kGroup;
        const uint8_t byte = q4[n * (K / 2) + g * 16 + (j % 16)];
        const int nib = j < 16 ? (byte & 0x0F) : (byte >> 4);
        return (nib - 8) * from_half(scales[n * G + g]);
      }
    }
  }
};

Weight make(int format, int64_t N, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::uniform_int_distribution<int> i8(-127, 127), i4(0, 255);
  Weight w{format, N, K, {}, {}, {}, {}};
  if (format == kBf16 || format == kFp16) {
    for (int64_t i = 0; i < N * K; i++)
      w.w16.push_back(format == kBf16 ? to_bf16(normal(rng)) : to_half(normal(rng)));
  } else {
    for (int64_t i = 0; i < N * K / kGroup; i++) w.scales.push_back(to_half(0.001f + i % 7 * 1e-4f));
    for (int64_t i = 0; i < N * K; i++) {
      if (format == kQ8) w.q8.push_back(static_cast<int8_t>(i8(rng)));
      else if (i < N * K / 2) w.q4.push_back(static_cast<uint8_t>(i4(rng)));
    }
  }
  return w;
}

// Decode attention of one query head over a sequence whose blocks are scattered in a pool of
// float32 (dtype 2) or bf16 (dtype 0) keys/values, against double-precision attention.
int check_attention(int dtype, std::mt19937& rng, int* checks) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t D = 48, block_size = 4, blocks = 6, T = 19;  // T ends inside a block
  const int64_t table[] = {4, 1, 5, 0, 3};
  const int elem = dtype == 2 ? 4 : 2;
  std::vector<uint8_t> keys(blocks * block_size * D * elem), values(keys.size());
  std::vector<double> k(blocks * block_size * D), v(k.size());
  for (size_t i = 0; i < k.size(); i++) {
    for (auto* plane : {&keys, &values}) {
      float x = normal(rng);
      if (dtype == 2) {
        std::memcpy(plane->data() + i * 4, &x, 4);
      } else {
        const uint16_t b = to_bf16(x);
        std::memcpy(plane->data() + i * 2, &b, 2);
        uint32_t bits = static_cast<uint32_t>(b) << 16;
        std::memcpy(&x, &bits, 4);
      }
      (plane == &keys ? k : v)[i] = x;
    }
  }
  std::vector<float> q(D), scratch(T), out(D);
  for (auto& x : q) x = normal(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const PagedHead kh{keys.data(), table, block_size, T, D};
  const PagedHead vh{values.data(), table, block_size, T, D};
  neon::attention(dtype, q.data(), kh, vh, scale, scratch.data(), out.data());
  std::vector<double> p(T);
  double top = -1e300, total = 0;
  for (int64_t t = 0; t < T; t++) {
    const double* row = k.data() + (table[t / block_size] * block_size + t % block_size) * D;
    double s = 0;
    for (int64_t d = 0; d < D; d++) s += q[d] * row[d];
    p[t] = s * scale;
    top = std::max(top, p[t]);
  }
  for (auto& x : p) total += (x = std::exp(x - top));
  int failures = 0;
  for (int64_t d = 0; d < D; d++, (*checks)++) {
    double want = 0;
    for (int64_t t = 0; t < T; t++)
      want += p[t] / total * v[(table[t / block_size] * block_size + t % block_size) * D + d];
    if (std::fabs(out[d] - want) > 1e-5) {
      if (failures++ < 5) std::printf("attention dtype %d: out[%ld] = %g, expected %g\n", dtype, (long)d, out[d], want);
    }
  }
  return failures;
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int checks = 0, failures = 0;
  const int64_t shapes[][2] = {{37, 96}, {64, 32}, {129, 512}};
  const int64_t row_counts[] = {1, 2, 3, 4, 5, 9, 16};
  for (int format = kBf16; format <= kQ4; format++) {
    for (const auto& shape : shapes) {
      const int64_t N = shape[0], K = shape[1];
      const Weight w = make(format, N, K, rng);
      std::vector<float> deq(N * K);
      neon::dequantize(format, w.data(), w.scales.data(), K, 0, N, deq.data(), false);
      for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++, checks++)
          if (deq[n * K + k] != w.at(n, k)) failures++;
      std::vector<uint16_t> deq16(N * K);  // the bf16 tiles: rounded to nearest even
      neon::dequantize(format, w.data(), w.scales.data(), K, 0, N, deq16.data(), true);
      for (int64_t i = 0; i < N * K; i++, checks++)
        if (deq16[i] != round_bf16(deq[i])) failures++;
      for (int64_t M : row_counts) {
        std::vector<float> x(M * K), y(M * N);
        for (auto& v : x) v = normal(rng);
        neon::gemv_float(format, w.data(), w.scales.data(), x.data(), M, K, y.data(), N, 0, N);
        for (int64_t m = 0; m < M; m++) {
          for (int64_t n = 0; n < N; n++, checks++) {
            double exact = 0, magnitude = 0;
            for (int64_t k = 0; k < K; k++) {
              exact += static_cast<double>(x[m * K + k]) * w.at(n, k);
              magnitude += std::fabs(static_cast<double>(x[m * K + k]) * w.at(n, k));
            }
            if (std::fabs(y[m * N + n] - exact) > 1e-5 * magnitude + 1e-7) {
              if (failures++ < 5)
                std::printf("format %d N %ld K %ld M %ld: y[%ld,%ld] = %g, expected %g\n", format,
                            (long)N, (long)K, (long)M, (long)m, (long)n, y[m * N + n], exact);
            }
          }
        }
      }
    }
  }
  for (int dtype : {2, 0}) failures += check_attention(dtype, rng, &checks);
  if (failures) {
    std::printf("%d of %d checks failed\n", failures, checks);
    return 1;
  }
  std::printf("ok: %d checks\n", checks);
  return 0;
}
