// The dropgrad ops as C++ kernels call them through the dispatcher (csrc/autograd.cpp's
// backwards, csrc/batching.cpp's batching rule): one handle per namespace and op, found once, by
// the names and signatures of csrc/ops.cpp's schemas.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "autograd.h"

namespace dg {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr const char* kNamespaces[] = {"dropgrad", "dropgrad_emulated", "dropgrad_triton"};

struct DropGradOp {
  static constexpr const char* name = "drop_grad";
  using Sig = Tensor(const Tensor&, double, int64_t, int64_t, int64_t, const OptTensor&);
};
struct NoiseOp {
  static constexpr const char* name = "noise";
  using Sig = DropGradOp::Sig;
};
struct UpdateOp {
  static constexpr const char* name = "dropgrad_update";
  using Sig = Tensor(const Tensor&, const Tensor&, const OptTensor&, double, double, int64_t, int64_t, int64_t,
                     const OptTensor&);
};
struct StepOp {
  static constexpr const char* name = "dropgrad_step";
  using Sig = std::vector<Tensor>(at::TensorList, at::TensorList, at::TensorList, double, double, int64_t, int64_t,
                                  int64_t, const OptTensor&, int64_t);
};
struct StepInPlaceOp {
  static constexpr const char* name = "dropgrad_step_";
  using Sig = void(at::TensorList, at::TensorList, at::TensorList, double, double, double, int64_t, int64_t, int64_t,
                   const OptTensor&);
};
struct MetaDropoutOp {
  static constexpr const char* name = "meta_dropout";
  using Sig = Tensor(const Tensor&, const Tensor&, bool, int64_t, int64_t, const OptTensor&);
};
struct MetaDropoutBackwardOp {
  static constexpr const char* name = "meta_dropout_backward";
  using Sig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, int64_t, int64_t,
                                         const OptTensor&);
};
struct MetaDropoutDoubleBackwardOp {
  static constexpr const char* name = "meta_dropout_double_backward";
  using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                 const Tensor&, bool, int64_t, int64_t, const OptTensor&);
};

template <Namespace N, class Op>
const c10::TypedOperatorHandle<typename Op::Sig>& op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow((std::string(kNamespaces[N]) + "::" + Op::name).c_str(), "")
                                 .template typed<typename Op::Sig>();
  return handle;
}

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
