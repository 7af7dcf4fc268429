// The entry points of cpu_kernels.cpp that decoder_stack.cpp calls directly (no Python between).
#pragma once

#include <torch/extension.h>

#include <vector>

torch::Tensor linear_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws,
                          const std::vector<torch::Tensor>& ss, int64_t format, int64_t isa);
torch::Tensor linear_bf16_native_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws);
torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& kv,
                                     const torch::Tensor& tables, const torch::Tensor& contexts,
                                     double scale, int64_t isa);

// Adds decoder_stack.cpp's DecoderStack class to the extension module.
void register_decoder_stack(pybind11::module& m);
