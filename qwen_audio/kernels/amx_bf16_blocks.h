// bf16 prompts times int8/int4 weights in 8-row blocks on AMX's tile unit (Sapphire Rapids and
// later): a GEMM whose weight tiles are dequantized to bf16 where they are used, in cache,
// instead of a pass that writes the whole dequantized weight to memory for PyTorch's GEMM and a
// second that reads it back (7B int8, a 5 s clip's prompt on 2 cores: ~0.7 s of a 2.9 s TTFT;
// 2.2 s this way).
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
// AMX-BF16, AVX512-BF16, AVX512-VNNI: a superset of row_block_pairs.h's, whose helpers for
// reading a pair of blocks it calls).
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
constexpr int64_t kInputTile = 16 * 32;  // bf16 elements of an input tile: 16 rows x 32

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
  using Pairs = avx512_vnni_blocks::RowBlockPairs<kQ4>;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
  for (int64_t g = 0; g < groups; g++) {
    // scales of outputs 0..15, each 4 times: lanes 4i..4i+3 of scale[q] = output 4q + i
    const __m512 all = Pairs::pair_scales(scales0, scales1, g);
    __m512 scale[4];
    for (int q = 0; q < 4; q++) {
      const __m512i pick = _mm512_set_epi32(4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3,
                                            4 * q + 2, 4 * q + 2, 4 * q + 2, 4 * q + 2,
                                            4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q,
                                            4 * q, 4 * q, 4 * q);
      scale[q] = _mm512_permutexvar_ps(pick, all);
    }
    const uint8_t* runs0 = blk0 + g * Pairs::kGroupBytes;
    const uint8_t* runs1 = blk1 + g * Pairs::kGroupBytes;
    uint8_t* tile = tiles + g * kTileBytes;
    for (int j = 0; j < (kQ4 ? 4 : 8); j++) {
      const __m512i run = Pairs::pair_run(runs0 + j * 32, runs1 + j * 32);
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

// The float32 sums of 32 input rows x 32 outputs over the groups [g0, g0 + count): input
// tiles at `x` (two rows of them, see gemm), weight tiles at `tiles0`, `tiles1` (from group
// g0). They start at zero (`first`) or from `partial`, and go back there, or at the last groups
// (`last`) out to y as bf16, its rows past `rows` not written.
inline void pass(const uint16_t* x, int64_t groups, int64_t g0, int64_t count,
                 const uint8_t* tiles0, const uint8_t* tiles1, float* partial, bool first,
                 bool last, int rows, uint16_t* y, int64_t ldy) {
  constexpr int64_t kSums = 16 * 16;  // floats of one tile of sums
  if (first) {
    _tile_zero(AMX_Y00);
    _tile_zero(AMX_Y01);
    _tile_zero(AMX_Y10);
    _tile_zero(AMX_Y11);
  } else {
    _tile_loadd(AMX_Y00, partial, 64);
    _tile_loadd(AMX_Y01, partial + kSums, 64);
    _tile_loadd(AMX_Y10, partial + 2 * kSums, 64);
    _tile_loadd(AMX_Y11, partial + 3 * kSums, 64);
  }
  const uint16_t* x0 = x + g0 * kInputTile;
  const uint16_t* x1 = x0 + groups * kInputTile;
  for (int64_t g = 0; g < count; g++) {
    _tile_loadd(AMX_X0, x0 + g * kInputTile, 64);
    _tile_loadd(AMX_X1, x1 + g * kInputTile, 64);
    _tile_loadd(AMX_W0, tiles0 + g * kTileBytes, 64);
    _tile_loadd(AMX_W1, tiles1 + g * kTileBytes, 64);
    _tile_dpbf16ps(AMX_Y00, AMX_X0, AMX_W0);
    _tile_dpbf16ps(AMX_Y01, AMX_X0, AMX_W1);
    _tile_dpbf16ps(AMX_Y10, AMX_X1, AMX_W0);
    _tile_dpbf16ps(AMX_Y11, AMX_X1, AMX_W1);
  }
  _tile_stored(AMX_Y00, partial, 64);
  _tile_stored(AMX_Y01, partial + kSums, 64);
  _tile_stored(AMX_Y10, partial + 2 * kSums, 64);
  _tile_stored(AMX_Y11, partial + 3 * kSums, 64);
  if (!last) return;
  for (int r = 0; r < rows; r++) {
    const float* top = partial + (r < 16 ? 0 : 2 * kSums) + (r % 16) * 16;  // outputs 0..15
    const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_load_ps(top + kSums), _mm512_load_ps(top));
    _mm512_storeu_si512(y + r * ldy, (__m512i)both);
  }
}

// x (M, K) bf16 rows as input tiles at `tiles`, (padded / 16, K / 32, 16, 32), the rows past
// M zeros: one pass over x, in parallel.
inline void lay_out_inputs(const uint16_t* x, int64_t M, int64_t K, int64_t padded,
                           uint16_t* tiles) {
  const int64_t groups = K / kGroup;
  at::parallel_for(0, padded / 16, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      for (int64_t g = 0; g < groups; g++) {
        uint16_t* tile = tiles + (t * groups + g) * kInputTile;
        for (int64_t r = 0; r < 16; r++) {
          const int64_t m = t * 16 + r;
          const __m512i row = m < M ? _mm512_loadu_si512(x + m * K + g * kGroup)
                                    : _mm512_setzero_si512();
          _mm512_store_si512(tile + r * kGroup, row);
        }
      }
    }
  });
}

// 64-byte aligned space for `bytes` in a thread's reused buffer number `which`.
inline uint8_t* scratch(int which, int64_t bytes) {
  thread_local std::vector<uint8_t> buffers[2];
  std::vector<uint8_t>& buffer = buffers[which];
  buffer.resize(static_cast<size_t>(bytes + 64));
  const auto start = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (64 - start % 64) % 64;
}

// y (M, N) bf16 = x @ w^T for the outputs [n0, n1), multiples of 32, of int8/int4 weights in
// 8-row blocks. x: the M bf16 rows of K inputs as input tiles, (Mp / 16, K / 32, 16, 32), M
// padded to whole passes with zeros, so that a tile is 1 KB in one piece.
//
// The work goes in chunks of input rows whose input tiles stay in L2 while every 32 outputs'
// weight tiles (made once per chunk: the costly part) meet them. A chunk holds all of K where
// at least 128 rows of it fit in 1.5 MB (7B's K = 4096: up to 192 rows), else up to 256 rows
// in groups of about 1 MB at a time, whose sums wait in memory between them (K = 11008).
// Over whole rows, every 32 outputs read all input rows again from beyond L2 (4096 x 11008,
// 160 rows: 1.3 TFLOP/s on 2 cores); in chunks of 256 rows and 1 MB for every K, 800 rows
// of 22016 x 4096 ran at 1.4 TFLOP/s, the sums' round trips costing more than new tiles.
template <bool kQ4>
void gemm(const uint16_t* x, int64_t M, int64_t K, const uint8_t* w, const uint16_t* s,
          uint16_t* y, int64_t N, int64_t n0, int64_t n1) {
  constexpr int64_t kGroupBytes = avx512_vnni_blocks::RowBlocks<kQ4>::kGroupBytes;
  constexpr int64_t kPassSums = 4 * 16 * 16;        // floats: 32 rows x 32 outputs
  const int64_t groups = K / kGroup, row_bytes = kQ4 ? K / 2 : K;
  const int64_t padded = (M + kRowsPerPass - 1) / kRowsPerPass * kRowsPerPass;
  // rows a chunk of all of K may have (1.5 MB of inputs), if enough: K = 4096 gives 192
  const int64_t in_l2 = (int64_t{3} << 19) / (K * 2) / kRowsPerPass * kRowsPerPass;
  const int64_t most_rows = in_l2 >= 4 * kRowsPerPass ? std::min<int64_t>(in_l2, 256) : 256;
  const int64_t chunks = (padded + most_rows - 1) / most_rows;  // even chunks: 800 = 5 x 160
  const int64_t chunk_rows = (padded / kRowsPerPass + chunks - 1) / chunks * kRowsPerPass;
  const int64_t tile_row_bytes = chunk_rows * kGroup * 2;  // one group of the chunk's inputs
  const int64_t chunk_groups = chunk_rows * K * 2 <= (int64_t{3} << 19)
                                   ? groups
                                   : std::max<int64_t>(16, (int64_t{1} << 20) / tile_row_bytes);
  const bool one_chunk_of_groups = chunk_groups >= groups;
  const int64_t blocks_of_outputs = (n1 - n0) / kOutputs;
  const int64_t passes_per_chunk = chunk_rows / kRowsPerPass;
  uint8_t* tiles0 = scratch(0, 2 * chunk_groups * kTileBytes);
  uint8_t* tiles1 = tiles0 + chunk_groups * kTileBytes;
  const int64_t slots = one_chunk_of_groups ? 1 : blocks_of_outputs * passes_per_chunk;
  auto* sums = reinterpret_cast<float*>(scratch(1, slots * kPassSums * 4));
  configure_tiles();
  for (int64_t m_chunk = 0; m_chunk < padded; m_chunk += chunk_rows) {
    const int64_t passes = std::min(chunk_rows, padded - m_chunk) / kRowsPerPass;
    for (int64_t g0 = 0; g0 < groups; g0 += chunk_groups) {
      const int64_t count = std::min(chunk_groups, groups - g0);
      const bool first = g0 == 0, last = g0 + count == groups;
      for (int64_t b = 0; b < blocks_of_outputs; b++) {
        const int64_t n = n0 + b * kOutputs;
        for (int half = 0; half < 2; half++) {
          const int64_t row = n + 16 * half;  // a pair of blocks: rows row..row + 15
          const uint8_t* blk = w + row * row_bytes + g0 * kGroupBytes;
          const uint16_t* sc = s + row * groups + g0 * 8;
          widen_pair<kQ4>(blk, blk + 8 * row_bytes, sc, sc + 8 * groups, count,
                          half == 0 ? tiles0 : tiles1);
        }
        for (int64_t p = 0; p < passes; p++) {
          const int64_t m0 = m_chunk + p * kRowsPerPass;
          const int rows = static_cast<int>(std::clamp<int64_t>(M - m0, 0, kRowsPerPass));
          const int64_t slot = one_chunk_of_groups ? 0 : b * passes_per_chunk + p;
          pass(x + m0 * K, groups, g0, count, tiles0, tiles1, sums + slot * kPassSums, first,
               last, rows, y + m0 * N + n, N);
        }
      }
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
