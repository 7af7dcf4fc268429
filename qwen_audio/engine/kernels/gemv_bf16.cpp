// bf16 matrix-vector products for decoding on CPUs with AVX512-BF16.
//
// y (M, N) = x (M, K) @ w (N, K)^T for a few rows M: each weight row is streamed from memory
// once and multiplied with all M inputs (two bf16 pairs per fp32 lane, `vdpbf16ps`), with fp32
// accumulation and round-to-nearest-even back to bf16. Decoding reads every weight once per
// token, so this runs at memory speed where the general GEMM path reaches about half of it.
#include <torch/extension.h>

#include <immintrin.h>

#include <cstring>

namespace {

constexpr int kMaxRows = 16;

inline uint16_t to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

template <int M>
void rows_times_weights(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t K, int64_t N) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
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
void dispatch(int rows, const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t K, int64_t N) {
  if constexpr (M > 0) {
    if (rows == M) return rows_times_weights<M>(x, w, y, K, N);
    dispatch<M - 1>(rows, x, w, y, K, N);
  }
}

}  // namespace

torch::Tensor gemv_bf16(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16,
              "gemv_bf16 takes bfloat16 tensors");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "shapes (M, K), (N, K)");
  TORCH_CHECK(x.size(1) % 32 == 0, "K must be a multiple of 32");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "at most 16 rows");
  const auto xc = x.contiguous();
  const auto wc = w.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1), N = wc.size(0);
  auto y = torch::empty({M, N}, xc.options());
  dispatch<kMaxRows>(static_cast<int>(M), reinterpret_cast<const uint16_t*>(xc.data_ptr()),
                     reinterpret_cast<const uint16_t*>(wc.data_ptr()),
                     reinterpret_cast<uint16_t*>(y.data_ptr()), K, N);
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gemv_bf16", &gemv_bf16, "bf16 GEMV"); }
