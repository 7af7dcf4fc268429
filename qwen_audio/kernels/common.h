// Constants shared by the kernels (cpu_kernels.cpp) and the standalone ARM check
// (tests/kernels/neon_check.cpp): the weight formats and their group size.
#pragma once

#include <cstdint>

constexpr int kGroup = 32;  // weights per scale in q8/q4; K must be a multiple of it
constexpr int kMaxInputRows = 16;
// kQ4x8 / kQ8x8: int4 / int8 in blocks of 8 output rows (row_blocks_body.h), made from kQ4 /
// kQ8 by PackedLinear.use_kernels on CPUs whose int8-input products run on the AVX2 kernels.
enum Format { kBf16 = 0, kFp16 = 1, kQ8 = 2, kQ4 = 3, kQ4x8 = 4, kQ8x8 = 5 };

// One kv head of a sequence in a layer's paged KV plane (keys or values), for decode attention.
struct PagedHead {
  const uint8_t* head;   // this kv head's first block
  const int64_t* table;  // the sequence's block ids
  int64_t block_size;
  int64_t T;             // its cached tokens
  int64_t D;
};
