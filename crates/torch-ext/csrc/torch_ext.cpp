// What tch does not expose, called through LibTorch's own C++ API: the fused AdamW kernel,
// the attention-backend switches, a counter of dispatcher operations, and attention over
// chunks of keys and values as one autograd function.
//
// Only dispatcher calls and LibTorch's public headers: no CUDA source, so the same file
// builds against the CPU and the CUDA LibTorch, and a CUDA tensor reaches the CUDA kernel
// through the dispatcher.
//
// Tensors arrive as tch passes them, `at::Tensor*`. Every function returns nullptr on
// success or a message allocated with `new[]` (freed by `torch_ext_free_error`): a C++
// exception never crosses into Rust.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

char* copy_message(const std::string& message) {
  char* out = new char[message.size() + 1];
  std::memcpy(out, message.c_str(), message.size() + 1);
  return out;
}

template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensor_list(at::Tensor** tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

// --- the op counter -------------------------------------------------------------------
//
// A thread-local RecordFunction callback sees every operator the dispatcher runs on the
// calling thread, nested ones included, and on the autograd engine's threads for the
// backward passes it starts (the engine carries the callback over, as it does the
// profiler's): the events the torch profiler lists. Those named `aten::...` are counted, as
// the profiler's `aten::` events are. One counter runs at a time (the Rust side holds a
// lock), so the count is a plain global.

std::atomic<uint64_t> op_count{0};
std::atomic<bool> keep_names{false};
std::mutex names_mutex;
std::map<std::string, uint64_t> op_names;

std::unique_ptr<at::ObserverContext> on_op_start(const at::RecordFunction& fn) {
  const char* name = fn.name();
  if (name != nullptr && std::strncmp(name, "aten::", 6) == 0) {
    op_count.fetch_add(1, std::memory_order_relaxed);
    if (keep_names.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> lock(names_mutex);
      op_names[name] += 1;
    }
  }
  return nullptr;
}

at::SDPBackend backend_of(int32_t backend) {
  switch (backend) {
    case 0: return at::SDPBackend::flash_attention;
    case 1: return at::SDPBackend::efficient_attention;
    case 2: return at::SDPBackend::math;
    case 3: return at::SDPBackend::cudnn_attention;
    default: throw std::invalid_argument("unknown attention backend " + std::to_string(backend));
  }
}

// --- dropout ---------------------------------------------------------------------------

// A dropout mask shaped and typed like `like`: each element 1 / (1 - p) with probability
// 1 - p, else 0, drawn from torch's generator as one f32 uniform per element (a bf16 uniform
// would move p by its rounding). On a CPU the uniform becomes the mask in one loop, where
// tensor operations would take a comparison, a cast and a scaling, each through the
// dispatcher with a scalar wrapped into a tensor; elsewhere it takes those operations.
at::Tensor dropout_mask(const at::Tensor& like, double p) {
  at::Tensor uniform = at::empty(like.sizes(), like.options().dtype(at::kFloat)).uniform_(0.0, 1.0);
  const double keep = 1.0 / (1.0 - p);
  if (!uniform.is_cpu()) return uniform.ge(p).to(like.scalar_type()).mul_(keep);
  at::Tensor mask = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  const float* drawn = uniform.const_data_ptr<float>();
  const float threshold = static_cast<float>(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(), "dropout_mask", [&] {
    scalar_t* out = mask.mutable_data_ptr<scalar_t>();
    const scalar_t kept = static_cast<scalar_t>(keep);
    at::parallel_for(0, mask.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = drawn[i] >= threshold ? kept : scalar_t(0);
    });
  });
  return mask;
}

// --- attention over chunks ------------------------------------------------------------
//
// softmax(q K^T / sqrt(hs) + bias) V, with dropout on the probabilities, where K and V are
// held in chunks read side by side (never concatenated: the first chunk is a whole
// question's keys, and a thought pass's queries read it at every pass). The query heads
// that share a key-value head (grouped-query attention) are rows of one matrix, so each
// chunk is one batched product. As one autograd function, the graph holds one node per
// layer and pass where the same products written with tensors hold a score, a softmax, a
// mask, a product and a view node for each: the backward pass below runs the few products
// the gradients need and nothing else.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ChunkedAttention : public torch::autograd::Function<ChunkedAttention> {
  // q (B, nh, Tq, hs); keys[j] and values[j] (B, n_kv, T_j, hs); bias (B, 1, Tq, T) with
  // T the sum of the T_j, in q's kind. Returns (B, Tq, nh * hs): the heads merged.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, at::TensorList keys,
                               at::TensorList values, const at::Tensor& bias, double dropout) {
    const int64_t b = q.size(0), nh = q.size(1), tq = q.size(2), hs = q.size(3);
    const int64_t n_kv = keys[0].size(1), rows = (nh / n_kv) * tq;
    const at::Tensor q3 = q.reshape({b * n_kv, rows, hs});  // (B n_kv, g Tq, hs)
    std::vector<at::Tensor> k3, v3;
    std::vector<at::Tensor> parts;
    int64_t t = 0;
    for (size_t j = 0; j < keys.size(); ++j) {
      k3.push_back(keys[j].reshape({b * n_kv, keys[j].size(2), hs}));
      v3.push_back(values[j].reshape({b * n_kv, values[j].size(2), hs}));
      parts.push_back(at::bmm(q3, k3[j].transpose(1, 2)));  // (B n_kv, g Tq, T_j)
      t += keys[j].size(2);
    }
    const at::Tensor products = parts.size() == 1 ? parts[0] : at::cat(parts, 2);
    // bias + products / sqrt(hs) in one operation (a scale of its own would be another)
    const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
    const at::Tensor scores = at::add(bias, products.view({b, nh, tq, t}), scale);
    at::Tensor probs = at::_softmax(scores, -1, false).view({b * n_kv, rows, t});
    at::Tensor mask;  // 0 or 1 / (1 - p)
    at::Tensor kept = probs;
    if (dropout > 0.0) {
      mask = dropout_mask(probs, dropout);
      kept = probs * mask;
    }
    at::Tensor out = chunk_product(kept, v3);  // (B n_kv, g Tq, hs)
    std::vector<at::Tensor> saved{q3, probs, mask};
    saved.insert(saved.end(), k3.begin(), k3.end());
    saved.insert(saved.end(), v3.begin(), v3.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["shape"] = std::vector<int64_t>{b, nh, tq, hs, n_kv};
    return {out.view({b, nh, tq, hs}).transpose(1, 2).reshape({b, tq, nh * hs})};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const int64_t b = shape[0], nh = shape[1], tq = shape[2], hs = shape[3], n_kv = shape[4];
    const at::Tensor& q3 = saved[0];
    const at::Tensor& probs = saved[1];
    const at::Tensor& mask = saved[2];
    const size_t n = (saved.size() - 3) / 2;
    const std::vector<at::Tensor> k3(saved.begin() + 3, saved.begin() + 3 + n);
    const std::vector<at::Tensor> v3(saved.begin() + 3 + n, saved.end());
    // (B, Tq, nh hs) -> (B n_kv, g Tq, hs), the layout of the forward's products
    const at::Tensor d_out =
        grads[0].view({b, tq, nh, hs}).transpose(1, 2).reshape({b * n_kv, (nh / n_kv) * tq, hs});
    const at::Tensor kept = mask.defined() ? probs * mask : probs;
    std::vector<at::Tensor> parts;
    for (const auto& v : v3) parts.push_back(at::bmm(d_out, v.transpose(1, 2)));
    at::Tensor d_probs = parts.size() == 1 ? parts[0] : at::cat(parts, 2);
    if (mask.defined()) d_probs.mul_(mask);
    // The scores' gradient before the 1 / sqrt(hs) scale, which the products below apply
    // through their `alpha` (with `beta` 0 their first argument is only a shape).
    const at::Tensor d_scores = at::_softmax_backward_data(d_probs, probs, -1, probs.scalar_type());
    const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
    variable_list out;
    at::Tensor d_q;
    int64_t start = 0;
    std::vector<at::Tensor> d_keys, d_values;
    for (size_t j = 0; j < n; ++j) {
      const int64_t len = k3[j].size(1);
      const auto kv_shape = std::vector<int64_t>{b, n_kv, len, hs};
      const at::Tensor d_part = n == 1 ? d_scores : d_scores.narrow(2, start, len);
      d_q = d_q.defined() ? d_q.baddbmm_(d_part, k3[j], 1.0, scale)
                          : at::baddbmm(q3, d_part, k3[j], 0.0, scale);
      d_keys.push_back(at::baddbmm(k3[j], d_part.transpose(1, 2), q3, 0.0, scale).view(kv_shape));
      const at::Tensor kept_part = n == 1 ? kept : kept.narrow(2, start, len);
      d_values.push_back(at::bmm(kept_part.transpose(1, 2), d_out).view(kv_shape));
      start += len;
    }
    out.push_back(d_q.view({b, nh, tq, hs}));
    out.insert(out.end(), d_keys.begin(), d_keys.end());
    out.insert(out.end(), d_values.begin(), d_values.end());
    out.push_back(at::Tensor());  // bias
    out.push_back(at::Tensor());  // dropout
    return out;
  }

  // The sum over chunks j of weights[:, :, chunk j's columns] @ matrices[j]:
  // (B n_kv, rows, hs).
  static at::Tensor chunk_product(const at::Tensor& weights,
                                  const std::vector<at::Tensor>& matrices) {
    if (matrices.size() == 1) return at::bmm(weights, matrices[0]);
    at::Tensor out;
    int64_t start = 0;
    for (const auto& m : matrices) {
      const at::Tensor part = weights.narrow(2, start, m.size(1));
      out = out.defined() ? out.baddbmm_(part, m) : at::bmm(part, m);
      start += m.size(1);
    }
    return out;
  }
};

}  // namespace

extern "C" {

void torch_ext_free_error(char* message) { delete[] message; }

// A dropout mask like `like` (see `dropout_mask`), into `out`.
char* torch_ext_dropout_mask(at::Tensor* like, double p, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(dropout_mask(*like, p)); });
}

// The hyperparameters of one AdamW update, as the Rust side's `#[repr(C)]` `AdamWStep`.
struct AdamWStep {
  double lr, beta1, beta2, weight_decay, eps;
};

// AdamW over lists of `n` tensors in one call of LibTorch's fused kernel (`_fused_adamw_`,
// with CPU and CUDA kernels). `lists` holds the parameters, their gradients, both moments
// and each entry's step count, already incremented for this update (float tensors on the
// parameters' device).
char* torch_ext_fused_adamw(at::Tensor** const (*lists)[5], size_t n, const AdamWStep* step) {
  return guarded([&] {
    auto p = tensor_list((*lists)[0], n);
    auto g = tensor_list((*lists)[1], n);
    auto m = tensor_list((*lists)[2], n);
    auto v = tensor_list((*lists)[3], n);
    auto s = tensor_list((*lists)[4], n);
    c10::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, step->lr, step->beta1,
                      step->beta2, step->weight_decay, step->eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

// Whether `scaled_dot_product_attention` may choose `backend` (0 flash, 1 memory-efficient,
// 2 math, 3 cuDNN).
char* torch_ext_set_sdp_backend(int32_t backend, bool enabled) {
  return guarded([&] {
    auto& context = at::globalContext();
    switch (backend_of(backend)) {
      case at::SDPBackend::flash_attention: context.setSDPUseFlash(enabled); break;
      case at::SDPBackend::efficient_attention: context.setSDPUseMemEfficient(enabled); break;
      case at::SDPBackend::math: context.setSDPUseMath(enabled); break;
      default: context.setSDPUseCuDNN(enabled); break;
    }
  });
}

char* torch_ext_sdp_backend_enabled(int32_t backend, bool* enabled) {
  return guarded([&] {
    auto& context = at::globalContext();
    switch (backend_of(backend)) {
      case at::SDPBackend::flash_attention: *enabled = context.userEnabledFlashSDP(); break;
      case at::SDPBackend::efficient_attention:
        *enabled = context.userEnabledMemEfficientSDP();
        break;
      case at::SDPBackend::math: *enabled = context.userEnabledMathSDP(); break;
      default: *enabled = context.userEnabledCuDNNSDP(); break;
    }
  });
}

// Starts counting the calling thread's dispatcher operations (from zero); `handle`
// identifies the callback for `torch_ext_op_counter_stop`, called on the same thread. With `names`, each operator's count is kept too.
char* torch_ext_op_counter_start(bool names, uint64_t* handle) {
  return guarded([&] {
    op_count.store(0);
    {
      std::lock_guard<std::mutex> lock(names_mutex);
      op_names.clear();
    }
    keep_names.store(names);
    auto callback = at::RecordFunctionCallback(on_op_start).needsInputs(false);
    *handle = at::addThreadLocalCallback(callback);
  });
}

char* torch_ext_op_counter_stop(uint64_t handle) {
  return guarded([&] { at::removeCallback(handle); });
}

uint64_t torch_ext_op_count() { return op_count.load(); }

// Attention over `n` chunks of keys and values (see `ChunkedAttention`), into `out`.
char* torch_ext_chunked_attention(at::Tensor* q, at::Tensor** keys, at::Tensor** values, size_t n,
                                  at::Tensor* bias, double dropout, at::Tensor** out) {
  return guarded([&] {
    auto k = tensor_list(keys, n);
    auto v = tensor_list(values, n);
    auto result = ChunkedAttention::apply(*q, at::TensorList(k), at::TensorList(v), *bias, dropout);
    *out = new at::Tensor(result[0]);
  });
}

// The operators counted with names, as "name\tcount\n" lines, in a message freed like an
// error's.
char* torch_ext_op_names() {
  std::lock_guard<std::mutex> lock(names_mutex);
  std::string out;
  for (const auto& entry : op_names) {
    out += entry.first + "\t" + std::to_string(entry.second) + "\n";
  }
  return copy_message(out);
}

}  // extern "C"
