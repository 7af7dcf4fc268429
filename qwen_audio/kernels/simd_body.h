// The weight-streaming kernels, written once against a small vector interface `V` and included
// once per instruction set (see cpu_kernels.cpp), inside a namespace that defines `V` under that
// instruction set's target options. No torch headers here: plain pointers only.
//
// Weight formats (all row-major, one output feature per row, K inputs per row):
//   bf16 / fp16  (N, K) 16-bit floats
//   q8           (N, K) int8 + (N, K/32) fp16 scales: w = q * scale           (as llama.cpp Q8_0)
//   q4           (N, K/2) bytes + (N, K/32) fp16 scales: w = (nibble - 8) * scale (as Q4_0); in
//                each group of 32 weights, byte j holds weight j (low nibble) and j + 16 (high)
// A kernel dequantizes one group of 32 weights into float32 registers and multiplies it with
// every input row, so each weight byte is read once per call whatever the number of rows.

// V::W floats per register; kGroup / V::W registers per group.
constexpr int kVecs = kGroup / V::W;

struct Bf16Rows {
  const uint16_t* w;
  int64_t K;
  inline const void* at(int64_t n, int64_t g) const { return w + n * K + g * kGroup; }
  inline void group(int64_t n, int64_t g, V::F out[kVecs]) const {
    const uint16_t* p = w + n * K + g * kGroup;
    for (int j = 0; j < kVecs; j++) out[j] = V::bf16(p + j * V::W);
  }
};

struct Fp16Rows {
  const uint16_t* w;
  int64_t K;
  inline const void* at(int64_t n, int64_t g) const { return w + n * K + g * kGroup; }
  inline void group(int64_t n, int64_t g, V::F out[kVecs]) const {
    const uint16_t* p = w + n * K + g * kGroup;
    for (int j = 0; j < kVecs; j++) out[j] = V::fp16(p + j * V::W);
  }
};

struct Q8Rows {
  const int8_t* q;
  const uint16_t* s;
  int64_t K;
  inline const void* at(int64_t n, int64_t g) const { return q + n * K + g * kGroup; }
  inline void group(int64_t n, int64_t g, V::F out[kVecs]) const {
    V::q8(q + n * K + g * kGroup, out);
    const V::F scale = V::set1(V::half(s[n * (K / kGroup) + g]));
    for (int j = 0; j < kVecs; j++) out[j] = V::mul(out[j], scale);
  }
};

struct Q4Rows {
  const uint8_t* q;
  const uint16_t* s;
  int64_t K;
  inline const void* at(int64_t n, int64_t g) const { return q + n * (K / 2) + g * (kGroup / 2); }
  inline void group(int64_t n, int64_t g, V::F out[kVecs]) const {
    V::q4(q + n * (K / 2) + g * (kGroup / 2), out);  // nibble - 8, as float
    const V::F scale = V::set1(V::half(s[n * (K / kGroup) + g]));
    for (int j = 0; j < kVecs; j++) out[j] = V::mul(out[j], scale);
  }
};

// int4 / int8 in blocks of 8 rows (quant.to_row_blocks), a row's group at a time, for the
// dequantized tiles of the prefill GEMM (the products read the blocks in row_blocks_body.h).
// Block b holds rows 8b..8b+7; in it group g's bytes come as 4-byte runs, run j of row r at
// ((g * words + j) * 8 + r) * 4, and group g's scales as 8, row r's at g * 8 + r.
template <int kWords>  // 4-byte runs of a row's group: 4 for int4, 8 for int8
struct BlockRows {
  const uint8_t* q;
  const uint16_t* s;
  int64_t K;
  inline void group(int64_t n, int64_t g, V::F out[kVecs]) const {
    const int64_t groups = K / kGroup, r = n % 8;
    const uint8_t* runs = q + (n / 8) * 8 * groups * kWords * 4 + g * kWords * 8 * 4;
    // the row's words straight into a register: gathered in a buffer first, the 4-byte stores
    // could not forward to the vector load (bf16 tiles on Sapphire Rapids, G weights/s: int4
    // 10.5 that way, 11.5 this way, 15 from rows; int8 8.6, 9.9, 13.8)
    const auto word = [&](int j) {
      uint32_t w;
      std::memcpy(&w, runs + (j * 8 + r) * 4, 4);
      return w;
    };
    if constexpr (kWords == 4) {
      V::q4_of(V::words16(word(0), word(1), word(2), word(3)), out);
    } else {
      V::q8_of(V::words16(word(0), word(1), word(2), word(3)),
               V::words16(word(4), word(5), word(6), word(7)), out);
    }
    const V::F scale = V::set1(V::half(s[(n / 8) * 8 * groups + g * 8 + r]));
    for (int j = 0; j < kVecs; j++) out[j] = V::mul(out[j], scale);
  }
};

// y[m * ldy + n] = sum_k x[m * ldx + k] * w[n, k] for MR rows m and the outputs n in [n0, n1).
// Two accumulator chains per row hide the FMA latency. Their number does not depend on MR, so
// a row's sums come out bit-identical whatever else is in the batch (batched == single).
//
// With several rows and a long K, the inputs (MR x K floats) outgrow the L1 cache and were read
// again from L2 for every output (the AVX2 bf16 kernel, weights in cache: ~150 GFLOP/s at
// K = 896 but ~100 at K = 4864 from 4 rows). Then the groups go in blocks whose inputs fit in
// 16 KB: each output of a tile of kTile keeps its accumulators in memory between blocks. The
// FMAs are the same ones in the same order, so the bits do not change.
constexpr int64_t kInputBlockFloats = 4096;  // 16 KB of inputs per block of groups
constexpr int64_t kTile = 16;  // outputs whose accumulators wait between blocks

template <class Rows, int MR, int kChains>
inline void accumulate_groups(const Rows& rows, const float* x, int64_t ldx, int64_t n,
                              int64_t g0, int64_t g1, V::F (&acc)[MR][kChains]) {
  for (int64_t g = g0; g < g1; g++) {
    // With several rows a weight row is consumed MR times slower than memory delivers it, and
    // the hardware prefetcher alone kept the 7B's bf16 products with 4 rows at ~11 GB/s; 2 KB
    // ahead makes it ~15. One row streams faster without it (26-28 against 23-24 GB/s).
    if constexpr (MR > 1) __builtin_prefetch(static_cast<const char*>(rows.at(n, g)) + 2048);
    V::F w[kVecs];
    rows.group(n, g, w);
    const float* xg = x + g * kGroup;
#pragma GCC unroll 16
    for (int m = 0; m < MR; m++) {
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; j++) {
        acc[m][j % kChains] = V::fma(w[j], V::load(xg + m * ldx + j * V::W), acc[m][j % kChains]);
      }
    }
  }
}

template <int MR, int kChains>
inline void store_sums(const V::F (&acc)[MR][kChains], float* y, int64_t ldy, int64_t n) {
#pragma GCC unroll 16
  for (int m = 0; m < MR; m++) {
    V::F total = acc[m][0];
#pragma GCC unroll 4
    for (int c = 1; c < kChains; c++) total = V::add(total, acc[m][c]);
    y[m * ldy + n] = V::hsum(total);
  }
}

template <class Rows, int MR>
void rows_times_weights(const Rows& rows, const float* x, int64_t ldx, float* y, int64_t ldy,
                        int64_t K, int64_t n0, int64_t n1) {
  constexpr int kChains = kVecs < 2 ? kVecs : 2;
  const int64_t groups = K / kGroup;
  // one block of all the groups where the inputs stay in L1 by themselves
  const int64_t block = MR == 1 ? groups : kInputBlockFloats / (MR * kGroup);
  for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
    const int64_t t1 = t0 + kTile < n1 ? t0 + kTile : n1;
    V::F saved[kTile][MR][kChains];
    for (int64_t g0 = 0; g0 < groups; g0 += block) {
      const int64_t g1 = g0 + block < groups ? g0 + block : groups;
      for (int64_t n = t0; n < t1; n++) {
        V::F acc[MR][kChains];
#pragma GCC unroll 16
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 4
          for (int c = 0; c < kChains; c++) acc[m][c] = g0 == 0 ? V::zero() : saved[n - t0][m][c];
        accumulate_groups<Rows, MR, kChains>(rows, x, ldx, n, g0, g1, acc);
        if (g1 == groups) {
          store_sums<MR, kChains>(acc, y, ldy, n);
          continue;
        }
#pragma GCC unroll 16
        for (int m = 0; m < MR; m++)
#pragma GCC unroll 4
          for (int c = 0; c < kChains; c++) saved[n - t0][m][c] = acc[m][c];
      }
    }
  }
}

template <class Rows>
void gemv_rows(const Rows& rows, const float* x, int64_t M, int64_t K, float* y, int64_t N,
               int64_t n0, int64_t n1) {
  // Rows of x in blocks of at most V::kMaxRows, each block re-reading the weight rows from
  // cache (a row of 4096 weights is 2-8 KB): the block's accumulators must fit in registers.
  for (int64_t m0 = 0; m0 < M; m0 += V::kMaxRows) {
    const int64_t mr = M - m0 < V::kMaxRows ? M - m0 : V::kMaxRows;
    const float* xm = x + m0 * K;
    float* ym = y + m0 * N;
    switch (mr) {
      case 1: rows_times_weights<Rows, 1>(rows, xm, K, ym, N, K, n0, n1); break;
      case 2: rows_times_weights<Rows, 2>(rows, xm, K, ym, N, K, n0, n1); break;
      case 3: rows_times_weights<Rows, 3>(rows, xm, K, ym, N, K, n0, n1); break;
      case 4: rows_times_weights<Rows, 4>(rows, xm, K, ym, N, K, n0, n1); break;
#if KMAXROWS > 4
      case 5: rows_times_weights<Rows, 5>(rows, xm, K, ym, N, K, n0, n1); break;
      case 6: rows_times_weights<Rows, 6>(rows, xm, K, ym, N, K, n0, n1); break;
      case 7: rows_times_weights<Rows, 7>(rows, xm, K, ym, N, K, n0, n1); break;
      case 8: rows_times_weights<Rows, 8>(rows, xm, K, ym, N, K, n0, n1); break;
#endif
      default: break;
    }
  }
}

// Rows [n0, n1) of the weight into `out`: float32, or bf16 (rounded from the same float32
// values as PyTorch's .to(torch.bfloat16) rounds them) for a bf16 GEMM.
template <class Rows>
void dequantize_rows(const Rows& rows, int64_t K, int64_t n0, int64_t n1, void* out, bool bf16) {
  const int64_t groups = K / kGroup;
  for (int64_t n = n0; n < n1; n++) {
    for (int64_t g = 0; g < groups; g++) {
      V::F w[kVecs];
      rows.group(n, g, w);
      const int64_t at = (n - n0) * K + g * kGroup;
      for (int j = 0; j < kVecs; j++) {
        if (bf16) {
          V::store_bf16(static_cast<uint16_t*>(out) + at + j * V::W, w[j]);
        } else {
          V::store(static_cast<float*>(out) + at + j * V::W, w[j]);
        }
      }
    }
  }
}

// The entry points of this instruction set (the dispatcher splits [0, N) across threads).
void gemv_float(int format, const void* w, const uint16_t* s, const float* x, int64_t M, int64_t K,
          float* y, int64_t N, int64_t n0, int64_t n1) {
  switch (format) {
    case kBf16: gemv_rows(Bf16Rows{static_cast<const uint16_t*>(w), K}, x, M, K, y, N, n0, n1); break;
    case kFp16: gemv_rows(Fp16Rows{static_cast<const uint16_t*>(w), K}, x, M, K, y, N, n0, n1); break;
    case kQ8: gemv_rows(Q8Rows{static_cast<const int8_t*>(w), s, K}, x, M, K, y, N, n0, n1); break;
    case kQ4: gemv_rows(Q4Rows{static_cast<const uint8_t*>(w), s, K}, x, M, K, y, N, n0, n1); break;
    default: break;
  }
}

void dequantize(int format, const void* w, const uint16_t* s, int64_t K, int64_t n0, int64_t n1,
                void* out, bool bf16) {
  switch (format) {
    case kBf16:
      dequantize_rows(Bf16Rows{static_cast<const uint16_t*>(w), K}, K, n0, n1, out, bf16);
      break;
    case kFp16:
      dequantize_rows(Fp16Rows{static_cast<const uint16_t*>(w), K}, K, n0, n1, out, bf16);
      break;
    case kQ8:
      dequantize_rows(Q8Rows{static_cast<const int8_t*>(w), s, K}, K, n0, n1, out, bf16);
      break;
    case kQ4:
      dequantize_rows(Q4Rows{static_cast<const uint8_t*>(w), s, K}, K, n0, n1, out, bf16);
      break;
    case kQ4x8:
      dequantize_rows(BlockRows<4>{static_cast<const uint8_t*>(w), s, K}, K, n0, n1, out, bf16);
      break;
    case kQ8x8:
      dequantize_rows(BlockRows<8>{static_cast<const uint8_t*>(w), s, K}, K, n0, n1, out, bf16);
      break;
    default: break;
  }
}

// Decode attention: one query per head against a sequence's cached keys and values, read in
// place from the engine's paged KV pool, float32 accumulation whatever the pool's dtype.
// PyTorch's fused attention with one bf16 query is slow on CPU (2.4 ms a layer at 800 keys where
// reading them takes ~0.3 ms), and feeding it a sequence whose blocks are scattered in the pool
// first copies all its keys and values (~10 MB a layer for a 7B after a 30 s clip). Three
// passes per query head: scores = q . k * scale, their softmax, out = probabilities . v. The
// softmax is done here, over exactly the sequence's tokens, so a sequence's result is the same
// bits whatever else is in the batch.
//
// One plane of a layer (its keys or its values) is (kv_heads, blocks, block_size, D): token t of
// a sequence is row t % block_size of block table[t / block_size]. `head` points at the query's
// kv head in that plane (see PagedHead in common.h); D % V::W == 0.
struct Bf16Vec {
  static inline V::F load(const void* p, int64_t i) { return V::bf16(static_cast<const uint16_t*>(p) + i); }
};
struct Fp16Vec {
  static inline V::F load(const void* p, int64_t i) { return V::fp16(static_cast<const uint16_t*>(p) + i); }
};
struct F32Vec {
  static inline V::F load(const void* p, int64_t i) { return V::load(static_cast<const float*>(p) + i); }
};


template <class Load, int kElem>
void scores_of_head(const float* q, const PagedHead& kv, float scale, float* scores) {
  const int64_t row_bytes = kv.D * kElem, block_bytes = kv.block_size * row_bytes;
  for (int64_t t0 = 0, j = 0; t0 < kv.T; t0 += kv.block_size, j++) {
    const uint8_t* block = kv.head + kv.table[j] * block_bytes;
    const int64_t rows = std::min(kv.block_size, kv.T - t0);
    for (int64_t r = 0; r < rows; r++) {
      const void* row = block + r * row_bytes;
      V::F a = V::zero(), b = V::zero();
      int64_t d = 0;
      for (; d + 2 * V::W <= kv.D; d += 2 * V::W) {
        a = V::fma(V::load(q + d), Load::load(row, d), a);
        b = V::fma(V::load(q + d + V::W), Load::load(row, d + V::W), b);
      }
      if (d < kv.D) a = V::fma(V::load(q + d), Load::load(row, d), a);
      scores[t0 + r] = V::hsum(V::add(a, b)) * scale;
    }
  }
}

template <class Load, int kElem>
void values_of_head(const float* p, const PagedHead& kv, float* out) {
  constexpr int kChunk = 4;  // output vectors accumulated at once
  const int64_t row_bytes = kv.D * kElem, block_bytes = kv.block_size * row_bytes;
  for (int64_t d0 = 0; d0 < kv.D; d0 += kChunk * V::W) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, (kv.D - d0) / V::W));
    V::F acc[kChunk];
    for (int j = 0; j < kChunk; j++) acc[j] = V::zero();
    for (int64_t t0 = 0, b = 0; t0 < kv.T; t0 += kv.block_size, b++) {
      const uint8_t* block = kv.head + kv.table[b] * block_bytes;
      const int64_t rows = std::min(kv.block_size, kv.T - t0);
      for (int64_t r = 0; r < rows; r++) {
        const V::F weight = V::set1(p[t0 + r]);
        const void* row = block + r * row_bytes;
        for (int j = 0; j < n; j++) acc[j] = V::fma(weight, Load::load(row, d0 + j * V::W), acc[j]);
      }
    }
    for (int j = 0; j < n; j++) V::store(out + d0 + j * V::W, acc[j]);
  }
}

// e^x for x <= 0 (scores minus their maximum), as Cephes' expf: x = n ln2 + r with |r| <= ln2/2,
// e^r by its degree-6 polynomial, times 2^n. Relative error ~2e-7; below e^-87 it gives e^-87.
inline V::F exp_nonpositive(V::F x) {
  x = V::max(x, V::set1(-87.0f));
  const V::F n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  x = V::fma(n, V::set1(-0.693359375f), x);  // ln2 in two parts: r stays exact
  x = V::fma(n, V::set1(2.12194440e-4f), x);
  V::F y = V::set1(1.9875691500e-4f);
  y = V::fma(y, x, V::set1(1.3981999507e-3f));
  y = V::fma(y, x, V::set1(8.3334519073e-3f));
  y = V::fma(y, x, V::set1(4.1665795894e-2f));
  y = V::fma(y, x, V::set1(1.6666665459e-1f));
  y = V::fma(y, x, V::set1(5.0000001201e-1f));
  y = V::fma(y, V::mul(x, x), V::add(x, V::set1(1.0f)));
  return V::mul(y, V::pow2(n));
}

// scores[0, T) -> their softmax, in place.
inline void softmax(float* scores, int64_t T) {
  float top = scores[0];
  for (int64_t t = 1; t < T; t++) top = std::max(top, scores[t]);
  const V::F minus_top = V::set1(-top);
  V::F total = V::zero();
  int64_t t = 0;
  for (; t + V::W <= T; t += V::W) {
    const V::F e = exp_nonpositive(V::add(V::load(scores + t), minus_top));
    V::store(scores + t, e);
    total = V::add(total, e);
  }
  float sum = V::hsum(total);
  for (; t < T; t++) {
    scores[t] = std::exp(scores[t] - top);
    sum += scores[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t + V::W <= T; t += V::W) V::store(scores + t, V::mul(V::load(scores + t), V::set1(inv)));
  for (; t < T; t++) scores[t] *= inv;
}

template <class Load, int kElem>
void attention_of_head(const float* q, const PagedHead& keys, const PagedHead& values, float scale,
                       float* scratch, float* out) {
  scores_of_head<Load, kElem>(q, keys, scale, scratch);
  softmax(scratch, keys.T);
  values_of_head<Load, kElem>(scratch, values, out);
}

// The entry point, for one query head: dtype 0 bf16, 1 fp16, 2 float32 (the pool's); `scratch`
// holds keys.T floats.
void attention(int dtype, const float* q, const PagedHead& keys, const PagedHead& values,
               float scale, float* scratch, float* out) {
  if (dtype == 0) attention_of_head<Bf16Vec, 2>(q, keys, values, scale, scratch, out);
  if (dtype == 1) attention_of_head<Fp16Vec, 2>(q, keys, values, scale, scratch, out);
  if (dtype == 2) attention_of_head<F32Vec, 4>(q, keys, values, scale, scratch, out);
}
