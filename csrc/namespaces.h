// The namespaces that define the ops of csrc/ops.cpp's table, what every namespace registers
// beside its kernels (autograd, csrc/autograd.cpp; batching rules, csrc/batching.cpp), and how C++
// calls an op of a namespace through the dispatcher.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace dg {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

enum Namespace : int { kDropgrad = 0, kEmulated = 1, kTriton = 2 };
constexpr const char* kNamespaces[] = {"dropgrad", "dropgrad_emulated", "dropgrad_triton"};

// The Autograd kernels of every differentiable op (and dropgrad_step_'s refusal), and
// dropgrad_step_'s ADInplaceOrView kernel (the params' version counters).
void register_autograd(torch::Library& m, Namespace ns);
void register_inplace_or_view(torch::Library& m, Namespace ns);

// The batching rules (FuncTorchBatched kernels) of the noisy ops.
void register_batching(torch::Library& m, Namespace ns);

// Inside a backward whose forward did not run under vmap level `level` (the batching rules then
// give every batch element the forward's one noise).
bool regenerating_outside(int64_t level);

// An op as C++ calls it: its name in the table and its C++ signature (what the schema's types
// become). op<N, Op>(): the typed handle of namespace N's op, found once. Each op's struct lives
// with the code that calls it (csrc/autograd.cpp); dropgrad_step's, which both files call, here.
template <Namespace N, class Op>
const c10::TypedOperatorHandle<typename Op::Sig>& op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow((std::string(kNamespaces[N]) + "::" + Op::name).c_str(), "")
                                 .template typed<typename Op::Sig>();
  return handle;
}

struct StepOp {
  static constexpr const char* name = "dropgrad_step";
  using Sig = std::vector<Tensor>(at::TensorList, at::TensorList, at::TensorList, double, double, int64_t, int64_t,
                                  int64_t, const OptTensor&, int64_t);
};

// f(std::integral_constant<Namespace, N>) for the namespace ns named at run time: the one switch
// from a library's namespace to the templates instantiated for it.
template <class F>
void for_namespace(Namespace ns, F&& f) {
  switch (ns) {
    case kDropgrad: return f(std::integral_constant<Namespace, kDropgrad>{});
    case kEmulated: return f(std::integral_constant<Namespace, kEmulated>{});
    case kTriton: return f(std::integral_constant<Namespace, kTriton>{});
  }
}

}  // namespace dg
