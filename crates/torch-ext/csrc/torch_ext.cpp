// What tch does not expose, called through LibTorch's own C++ API: the fused AdamW kernel,
// the attention-backend switches and a counter of dispatcher operations.
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
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>

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

}  // namespace

extern "C" {

void torch_ext_free_error(char* message) { delete[] message; }

// AdamW over lists of tensors in one call of LibTorch's fused kernel (`_fused_adamw_`,
// with CPU and CUDA kernels). `steps` holds each list entry's step count, already
// incremented for this update (float tensors on the parameters' device).
char* torch_ext_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                            at::Tensor** exp_avg_sqs, at::Tensor** steps, size_t n, double lr,
                            double beta1, double beta2, double weight_decay, double eps) {
  return guarded([&] {
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto m = tensor_list(exp_avgs, n);
    auto v = tensor_list(exp_avg_sqs, n);
    auto s = tensor_list(steps, n);
    c10::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2, weight_decay,
                      eps, /*amsgrad=*/false, /*maximize=*/false);
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
