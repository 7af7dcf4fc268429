// A decode step of the whole Qwen2 decoder stack in one call from Python.
//
// Decoding a token runs ~45 small PyTorch operations per layer from Python (norms, rotary
// positions, the KV write, residuals) around the weight-streaming products: 3-4 ms of a ~35 ms
// token of the 24-layer 0.5B on 2 cores, all interpreter and dispatch overhead.
// DecoderStack runs the same operations, in the same order and on the same ATen kernels, from
// C++: the results are the Python layer loop's bits (tested), so a sequence decodes the same
// whether a step takes this path (decode-only steps) or the Python one (steps with a prompt
// chunk). It mirrors model/qwen2.py (Qwen2DecoderLayer with the kernels attached) and
// model/attention.py (SDPABackend.write, the decode kernel); a change there must be made here.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "kernel_api.h"

namespace {

// A PackedLinear, or a StackedLinears of several, on the kernels (model/packed.py's
// `_kernel_product` followed by the bias): y = x @ W^T (+ bias), in x's dtype.
struct KernelLinear {
  std::vector<torch::Tensor> weights, scales;
  int64_t format = 0, isa = 0;
  bool native_bf16 = false;  // bf16 weights on AVX512-BF16: bf16 inputs take the bf16 kernel
  torch::Tensor bias;        // undefined: no bias

  torch::Tensor operator()(const torch::Tensor& x) const {
    const auto dtype = x.scalar_type();
    torch::Tensor y;
    if (native_bf16 && dtype == torch::kBFloat16) {
      y = linear_bf16_native_many(x, weights);
    } else {
      y = linear_many(x.to(torch::kFloat).contiguous(), weights, scales, format, isa).to(dtype);
    }
    return bias.defined() ? y + bias : y;
  }
};

struct Layer {
  torch::Tensor input_norm, post_norm;  // RMSNorm weights
  KernelLinear qkv, o, gate_up, down;
};

// model/qwen2.py's RMSNorm: normalised in float32, scaled in the activations' dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto h = at::rms_norm(x.to(torch::kFloat), {x.size(-1)}, c10::nullopt, eps);
  return weight * h.to(x.scalar_type());
}

// Rotate-half rotary positions on x (heads, T, D) with cos/sin (T, D): qwen2.apply_rotary.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto rotated = torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

KernelLinear kernel_linear(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> scales,
                           int64_t format, int64_t isa, bool native_bf16,
                           const torch::Tensor& bias) {
  TORCH_CHECK(!weights.empty() && weights.size() == scales.size(), "one scales per weight");
  KernelLinear linear{std::move(weights), std::move(scales), format, isa, native_bf16, {}};
  if (bias.numel() > 0) linear.bias = bias;
  return linear;
}

}  // namespace

// The decoder layers of one model, their weights held by reference (no copies).
class DecoderStack {
 public:
  DecoderStack(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, int64_t isa)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), isa_(isa) {
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim % 2 == 0,
                "heads: a multiple of the kv heads; an even head size");
  }

  // One linear (or stack) is (weights, scales, format id, native bf16, bias or an empty tensor).
  void add_layer(const torch::Tensor& input_norm, const torch::Tensor& post_norm,
                 std::vector<torch::Tensor> qkv_w, std::vector<torch::Tensor> qkv_s,
                 int64_t qkv_format, bool qkv_native, const torch::Tensor& qkv_bias,
                 std::vector<torch::Tensor> o_w, std::vector<torch::Tensor> o_s, int64_t o_format,
                 bool o_native, const torch::Tensor& o_bias, std::vector<torch::Tensor> gu_w,
                 std::vector<torch::Tensor> gu_s, int64_t gu_format, bool gu_native,
                 const torch::Tensor& gu_bias, std::vector<torch::Tensor> down_w,
                 std::vector<torch::Tensor> down_s, int64_t down_format, bool down_native,
                 const torch::Tensor& down_bias) {
    layers_.push_back({input_norm, post_norm,
                       kernel_linear(std::move(qkv_w), std::move(qkv_s), qkv_format, isa_,
                                     qkv_native, qkv_bias),
                       kernel_linear(std::move(o_w), std::move(o_s), o_format, isa_, o_native,
                                     o_bias),
                       kernel_linear(std::move(gu_w), std::move(gu_s), gu_format, isa_,
                                     gu_native, gu_bias),
                       kernel_linear(std::move(down_w), std::move(down_s), down_format, isa_,
                                     down_native, down_bias)});
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x (T, hidden): one new token of each of T sequences, in the order of `tables`/`contexts`;
  // cos/sin (T, head_dim); kv the engine's pool (layers, 2, kv_heads, blocks, block_size,
  // head_dim); slots (T,) the pool slot of each new token -> the hidden states after the last
  // layer (before the final norm), each layer's keys and values written into the pool.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& kv, const torch::Tensor& slots,
                        const torch::Tensor& tables, const torch::Tensor& contexts) const {
    const int64_t T = x.size(0), H = heads_, Hkv = kv_heads_, D = head_dim_;
    TORCH_CHECK(x.dim() == 2 && kv.dim() == 6 && kv.size(0) == num_layers() &&
                    kv.size(2) == Hkv && kv.size(5) == D,
                "x (T, hidden) and a pool (layers, 2, kv_heads, blocks, block_size, head_dim)");
    TORCH_CHECK(slots.size(0) == T && tables.size(0) == T && contexts.size(0) == T,
                "one slot, block table and context per token");
    const int64_t pool_slots = kv.size(3) * kv.size(4);
    const double scale = std::pow(static_cast<double>(D), -0.5);  // Python's D ** -0.5
    for (int64_t i = 0; i < num_layers(); i++) {
      const Layer& L = layers_[i];
      // attention: q/k/v in one product, rotary on q and k together (their heads side by side)
      auto qkv = L.qkv(rms_norm(x, L.input_norm, eps_)).view({T, H + 2 * Hkv, D}).transpose(0, 1);
      auto qk = apply_rotary(qkv.slice(0, 0, H + Hkv), cos, sin);
      auto q = qk.slice(0, 0, H), k = qk.slice(0, H), v = qkv.slice(0, H + Hkv);
      auto kv_layer = kv.select(0, i);
      kv_layer.select(0, 0).view({Hkv, pool_slots, D}).index_copy_(1, slots, k.to(kv.dtype()));
      kv_layer.select(0, 1).view({Hkv, pool_slots, D}).index_copy_(1, slots, v.to(kv.dtype()));
      auto heads_out = paged_decode_attention(q.transpose(0, 1).to(torch::kFloat).contiguous(),
                                              kv_layer, tables, contexts, scale, isa_)
                           .transpose(0, 1)
                           .to(x.scalar_type());  // (H, T, D)
      x = x + L.o(heads_out.transpose(0, 1).reshape({T, H * D}));
      // MLP
      auto gate_up = L.gate_up(rms_norm(x, L.post_norm, eps_)).chunk(2, -1);
      x = x + L.down(at::silu(gate_up[0]) * gate_up[1]);
    }
    return x;
  }

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  int64_t isa_;
  std::vector<Layer> layers_;
};

void register_decoder_stack(pybind11::module& m) {
  pybind11::class_<DecoderStack>(m, "DecoderStack")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, int64_t>())
      .def("add_layer", &DecoderStack::add_layer)
      .def("num_layers", &DecoderStack::num_layers)
      // no Python object is touched inside: other threads (the server) run meanwhile
      .def("forward", &DecoderStack::forward, pybind11::call_guard<pybind11::gil_scoped_release>());
}
