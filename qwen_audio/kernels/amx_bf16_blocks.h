// bf16 prompts times int8/int4 weights in 8-row blocks on AMX's tile unit (Sapphire Rapids and
// later): a GEMM whose weight tiles are dequantized to bf16 where they are used, in cache,
// instead of a pass that writes the whole dequantized weight to memory for PyTorch's GEMM and a
// second that reads it back (7B int8, a 5 s clip's prompt on 2 cores: ~0.7 s of a 2.9 s TTFT).
//
// The bf16 weights are the tile path's bits (the integer times its fp16 scale in float32,
// rounded to nearest even: PackedLinear.dequantized), and the tile unit multiplies bf16 pairs
// into float32 sums as PyTorch's AMX GEMM does; only the order of the float32 additions
// differs from that GEMM, so the results agree to float32 rounding before the bf16 output.
//
// Layout: a weight tile is 16 output rows (a pair of blocks) x 32 inputs (one group) in AMX's
// bf16 pair order, tile row r holding inputs 2r, 2r + 1 of each of the 16 outputs. Run j of a
// block holds inputs 4j..4j+3 of each of its 8 rows (int4: the low nibbles; the high ones are
// inputs 16 + 4j..), so run j of the pair widened to 64 floats, scaled and rounded, is tile rows
// 2j (even 32-bit words) and 2j + 1 (odd words).
//
// Included by cpu_kernels.cpp inside namespace amx under its target options (AMX-TILE,
// AMX-BF16, AVX512-BF16).
struct TileConfig {  // the 64 bytes `ldtilecfg` reads: palette 1, then each tile's shape
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Tile registers (their numbers are immediates): two of inputs (16 rows x 32 bf16), two of
// weights (16 outputs x 32 inputs), four of float32 sums (16 x 16) for the 2 x 2 combinations,
// so each tile loaded serves two products.
#define AMX_X0 0
#define AMX_X1 1
#define AMX_W0 2
#define AMX_W1 3
#define AMX_Y00 4
#define AMX_Y01 5
#define AMX_Y10 6
#define AMX_Y11 7

inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; t++) config.rows[t] = 16, config.bytes_per_row[t] = 64;
  _tile_loadconfig(&config);
}

constexpr int64_t kTileBytes = 16 * 64;  // one weight tile: 16 outputs x 32 bf16 inputs
constexpr int64_t kOutputs = 32;         // outputs per pass: two weight tiles
constexpr int64_t kRowsPerPass = 32;     // input rows per pass: two input tiles

// Run j of a pair (16 outputs x 4 inputs as int8, values as `bytes`) scaled and rounded to
// bf16, as tile rows 2j and 2j + 1 at `tile`. `scale[i]`: the scales of outputs 4i..4i+3,
// each repeated for its 4 inputs.
inline void widen_run(__m512i bytes, const __m512 scale[4], uint8_t* tile, int j) {
  __m512 w[4];  // outputs 4i..4i+3 in w[i]
  w[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(bytes)));
  w[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 1)));
  w[2] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 2)));
  w[3] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, 3)));
  // outputs 0..7 (inputs 4j..4j+3 each) in `low`, 8..15 in `high`, as bf16 in input order
  const __m512i low = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(w[1], scale[1]),
                                                  _mm512_mul_ps(w[0], scale[0]));
  const __m512i high = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(w[3], scale[3]),
                                                   _mm512_mul_ps(w[2], scale[2]));
  // 32-bit word 2o of an output o holds its inputs (4j, 4j + 1), word 2o + 1 (4j + 2, 4j + 3)
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  _mm512_store_si512((__m512i*)(tile + (2 * j) * 64), _mm512_permutex2var_epi32(low, even, high));
  _mm512_store_si512((__m512i*)(tile + (2 * j + 1) * 64),
                     _mm512_permutex2var_epi32(low, odd, high));
}

// The pair of blocks at `blk0`, `blk1` (int8 runs of 256 bytes a group, int4 of 128) as
// weight tiles, one per group, at `tiles`.
template <bool kQ4>
void widen_pair(const uint8_t* blk0, const uint8_t* blk1, const uint16_t* scales0,
                const uint16_t* scales1, int64_t groups, uint8_t* tiles) {
  constexpr int64_t kGroupBytes = kQ4 ? 128 : 256;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
  for (int64_t g = 0; g < groups; g++) {
    // scales of outputs 0..15, each 4 times: lanes 4i..4i+3 of scale[q] = output 4q + i
    const __m256i halves = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(scales0 + g * 8))),
        _mm_loadu_si128((const __m128i*)(scales1 + g * 8)), 1);
    const __m512 all = _mm512_cvtph_ps(halves);
    __m512 scale[4];
    for (int q = 0; q < 4; q++) {
      const __m512i pick = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3,
                                            4 * q + 2, 4 * q + 2, 4 * q + 2, 4 * q + 2,
                                            4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q,
                                            4 * q, 4 * q, 4 * q);
      scale[q] = _mm512_permutexvar_ps(pick, all);
    }
    const uint8_t* runs0 = blk0 + g * kGroupBytes;
    const uint8_t* runs1 = blk1 + g * kGroupBytes;
    uint8_t* tile = tiles + g * kTileBytes;
    for (int j = 0; j < (kQ4 ? 4 : 8); j++) {
      const __m512i run = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(runs0 + j * 32))),
          _mm256_loadu_si256((const __m256i*)(runs1 + j * 32)), 1);
      if constexpr (kQ4) {
        const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(run, low_nibbles), eight);
        const __m512i hi = _mm512_sub_epi8(
            _mm512_and_si512(_mm512_srli_epi16(run, 4), low_nibbles), eight);
        widen_run(lo, scale, tile, j);
        widen_run(hi, scale, tile, 4 + j);
      } else {
        widen_run(run, scale, tile, j);
      }
    }
  }
}

// y[m, n] for input rows [m0, m0 + 32) (of a buffer padded to whole passes) and the 32
// outputs whose weight tiles are `tiles0`, `tiles1`; rows past `rows` are not written.
inline void pass(const uint16_t* x, int64_t K, const uint8_t* tiles0, const uint8_t* tiles1,
                 int rows, uint16_t* y, int64_t ldy) {
  const int64_t groups = K / kGroup, stride = K * 2;
  _tile_zero(AMX_Y00);
  _tile_zero(AMX_Y01);
  _tile_zero(AMX_Y10);
  _tile_zero(AMX_Y11);
  for (int64_t g = 0; g < groups; g++) {
    _tile_loadd(AMX_X0, x + g * kGroup, stride);
    _tile_loadd(AMX_X1, x + 16 * K + g * kGroup, stride);
    _tile_loadd(AMX_W0, tiles0 + g * kTileBytes, 64);
    _tile_loadd(AMX_W1, tiles1 + g * kTileBytes, 64);
    _tile_dpbf16ps(AMX_Y00, AMX_X0, AMX_W0);
    _tile_dpbf16ps(AMX_Y01, AMX_X0, AMX_W1);
    _tile_dpbf16ps(AMX_Y10, AMX_X1, AMX_W0);
    _tile_dpbf16ps(AMX_Y11, AMX_X1, AMX_W1);
  }
  alignas(64) float sums[4][16 * 16];
  _tile_stored(AMX_Y00, sums[0], 64);
  _tile_stored(AMX_Y01, sums[1], 64);
  _tile_stored(AMX_Y10, sums[2], 64);
  _tile_stored(AMX_Y11, sums[3], 64);
  for (int r = 0; r < rows; r++) {
    const float* top = sums[r < 16 ? 0 : 2] + (r % 16) * 16;  // outputs 0..15
    const float* next = sums[r < 16 ? 1 : 3] + (r % 16) * 16;  // outputs 16..31
    const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_load_ps(next), _mm512_load_ps(top));
    _mm512_storeu_si512(y + r * ldy, (__m512i)both);
  }
}

// y (M, N) bf16 = x (Mp, K) bf16 (M rows padded to whole passes with zeros) @ w^T for the
// outputs [n0, n1), multiples of 32, of int8/int4 weights in 8-row blocks.
template <bool kQ4>
void gemm(const uint16_t* x, int64_t M, int64_t K, const uint8_t* w, const uint16_t* s,
          uint16_t* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t groups = K / kGroup, row_bytes = kQ4 ? K / 2 : K;
  thread_local std::vector<uint8_t> buffer;
  buffer.resize(static_cast<size_t>(2 * groups * kTileBytes + 64));
  const auto start = reinterpret_cast<uintptr_t>(buffer.data());
  uint8_t* tiles0 = buffer.data() + (64 - start % 64) % 64;  // whole cache lines
  uint8_t* tiles1 = tiles0 + groups * kTileBytes;
  configure_tiles();
  for (int64_t n = n0; n < n1; n += kOutputs) {
    for (int half = 0; half < 2; half++) {
      const int64_t first = n + 16 * half;  // a pair of blocks: rows first..first + 15
      const uint8_t* blk = w + first * row_bytes;
      const uint16_t* sc = s + first * groups;
      widen_pair<kQ4>(blk, blk + 8 * row_bytes, sc, sc + 8 * groups, groups,
                      half == 0 ? tiles0 : tiles1);
    }
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int rows = static_cast<int>(std::min<int64_t>(kRowsPerPass, M - m0));
      pass(x + m0 * K, K, tiles0, tiles1, rows, y + m0 * N + n, N);
    }
  }
  _tile_release();
}

#undef AMX_X0
#undef AMX_X1
#undef AMX_W0
#undef AMX_W1
#undef AMX_Y00
#undef AMX_Y01
#undef AMX_Y10
#undef AMX_Y11
