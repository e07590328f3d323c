// The batching rules of the noisy ops for torch.func.vmap, in C++ for their cost: a Python rule
// cost several times the eager ops it replaces under vmap (and a meta-batch's parameter list, 36
// tensors in and 18 out for a Conv-4, more than the whole per-task loop). philox4x32_10's and
// cuda_rng_state's rules, neither on a hot path, are Python (dropgrad_cuda/_batching.py).
//
// Each rule makes one kernel call for the whole batch, its noise following vmap's randomness
// (docs/noise_contract.md, "Batched streams"): with "different", element e's stream starts e
// spans of its call later. dropgrad_step runs on a batch of lists (its `batch` argument,
// csrc/ops.cpp), into which a call that is itself a batch of lists (a nested vmap, a backward
// under vmap) folds its own; dropgrad_update as a batch of one-tensor lists; the other
// elementwise ops on (batch, span) rows of their tensors (padded where numel is not a multiple
// of 4). "same" gives every element the unbatched call's noise.
//
// Private API: at::functorch's DynamicLayer and BatchedTensorImpl, as PyTorch's own C++ batching
// rules use them (unchanged torch 2.11 to 2.15); torch.library.register_vmap is the public way,
// and its Python pytree passes are the cost this file removes.
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/stack.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "namespaces.h"
#include "dropgrad_math.h"
#include "ops.h"

namespace dg {
namespace {

// The randomness a noisy op follows at vmap level `level`: Same inside a backward whose forward
// did not run under it, else the level's own; refuses "error" (vmap's default), naming op.
at::functorch::RandomnessType noise_randomness(int64_t level, const char* op) {
  using at::functorch::RandomnessType;
  if (regenerating_outside(level)) return RandomnessType::Same;  // a backward outside its forward's vmap
  RandomnessType randomness = RandomnessType::Error;
  for (const auto& layer : at::functorch::getDynamicLayerStack()) {
    if (layer.layerId() == level) randomness = layer.randomness();
  }
  TORCH_CHECK(randomness != RandomnessType::Error, "dropgrad ", op,
              " draws noise, and vmap's randomness argument is 'error' (its default): pass randomness='different' "
              "for fresh noise per batch element (the DropGrad way) or 'same' for one noise shared by all, or turn "
              "the noise off (mode='none', p=0, deterministic=True)");
  return randomness;
}

// t with its batch dimension at `level` first (*batched set), or t expanded to the batch.
Tensor front(const Tensor& t, int64_t level, int64_t size, bool& batched) {
  const auto* impl = at::functorch::maybeGetBatchedImpl(t);
  if (impl != nullptr && impl->level() == level) {
    batched = true;
    return impl->bdim() == 0 ? impl->value() : impl->value().movedim(impl->bdim(), 0);
  }
  std::vector<int64_t> shape{size};
  shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
  return t.expand(shape);
}

// A list's tensors at one vmap level, each brought to the front by front().
struct Unwrapped {
  std::vector<Tensor> fronts;
  std::vector<bool> batched;
  bool any = false;

  Unwrapped(at::TensorList ts, int64_t level, int64_t size) {
    for (const Tensor& t : ts) {
      bool here = false;
      fronts.push_back(front(t, level, size, here));
      batched.push_back(here);
      any = any || here;
    }
  }
};

template <Namespace N>
std::vector<Tensor> dropgrad_step_batched(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                                          double p, int64_t mode, int64_t seed, int64_t offset,
                                          const OptTensor& rng_state, int64_t batch) {
  const c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::FuncTorchBatched);
  const auto layer = at::functorch::maybeCurrentDynamicLayer();
  TORCH_INTERNAL_ASSERT(layer.has_value(), "dropgrad_step's batching rule ran outside vmap");
  const int64_t level = layer->layerId(), size = layer->batchSize().guard_int(__FILE__, __LINE__);
  const Unwrapped ps(params, level, size), gs(grads, level, size), ls(lrs, level, size);
  const auto& call = op<N, StepOp>();
  if (!ps.any && !gs.any && !ls.any) {  // nothing batched at this level: the op itself, one level down
    return call.call(params, grads, lrs, lr, p, mode, seed, offset, rng_state, batch);
  }
  const bool noisy = noise_mode(mode, p) != kNone;
  const size_t n = params.size();
  std::vector<Tensor> outs;
  if (noisy && noise_randomness(level, "dropgrad_step") == at::functorch::RandomnessType::Same) {
    std::vector<std::vector<Tensor>> per;  // every element the unbatched call's noise
    for (int64_t e = 0; e < size; ++e) {
      auto pick = [e](const std::vector<Tensor>& xs) {
        std::vector<Tensor> out;
        for (const Tensor& x : xs) out.push_back(x.select(0, e));
        return out;
      };
      per.push_back(call.call(pick(ps.fronts), pick(gs.fronts), pick(ls.fronts), lr, p, mode, seed, offset, rng_state,
                              batch));
    }
    for (size_t k = 0; k < n; ++k) {
      std::vector<Tensor> column;
      for (const auto& o : per) column.push_back(o[k]);
      outs.push_back(at::stack(column));
    }
  } else {
    auto flat = [batch](const Tensor& x) { return batch ? x.flatten(0, 1) : x; };
    std::vector<Tensor> fp, fg, fl;
    for (size_t k = 0; k < n; ++k) {
      fp.push_back(flat(ps.fronts[k]));
      fg.push_back(flat(gs.fronts[k]));
    }
    for (size_t k = 0; k < lrs.size(); ++k) {
      // An unbatched scalar or one-list lr stays shared by the lists; any other (per element, or
      // per list of an inner batch) is made full-shape.
      const Tensor& l = lrs[k];
      const auto shape = ps.fronts[k].sizes();  // (size, [batch,] *one list's tensor)
      const auto row_shape = shape.slice(batch ? 2 : 1);
      if (!ls.batched[k] && (l.dim() == 0 || l.sizes() == row_shape)) {
        fl.push_back(l);
        continue;
      }
      const Tensor& x = ls.fronts[k];  // (size, *l's shape): broadcast from the right
      std::vector<int64_t> view{size};
      view.insert(view.end(), shape.size() - x.dim(), 1);
      view.insert(view.end(), x.sizes().begin() + 1, x.sizes().end());
      fl.push_back(flat(x.reshape(view).expand(shape).contiguous()));
    }
    outs = call.call(fp, fg, fl, lr, p, mode, seed, offset, rng_state, size * std::max<int64_t>(batch, 1));
    if (batch) {
      for (Tensor& o : outs) o = o.unflatten(0, {size, batch});
    }
  }
  for (Tensor& o : outs) o = at::functorch::makeBatched(o, 0, level);
  return outs;
}

// The elementwise ops (noise, drop_grad, dropgrad_update, meta_dropout and its two backwards),
// boxed: their tensors share one shape, rng_state is never batched, and whether a call draws
// noise is read from its p and mode, or its deterministic flag.
template <Namespace N>
void elementwise_batched(const c10::OperatorHandle& handle, torch::jit::Stack* stack) {
  const auto& args = handle.schema().arguments();
  const std::string& qualified = handle.schema().name();
  const std::string name = qualified.substr(qualified.find("::") + 2);
  const size_t nargs = args.size();
  auto arg = [&](const char* key) -> c10::IValue& {
    for (size_t i = 0; i < nargs; ++i) {
      if (args[i].name() == key) return (*stack)[stack->size() - nargs + i];
    }
    TORCH_INTERNAL_ASSERT(false, qualified, " has no argument ", key);
  };
  if (name == "dropgrad_update") {
    // dropgrad_step of one-tensor lists at this same level (its rule above): its batched streams
    // are exactly these, with no padded rows (each list's row is an entry of its own), and a
    // batched 0-d lr stays a per-element scalar.
    const c10::IValue& lr_tensor = arg("lr_tensor");
    auto outs = op<N, StepOp>().call(
        {arg("param").toTensor()}, {arg("grad").toTensor()},
        lr_tensor.isNone() ? std::vector<Tensor>{} : std::vector<Tensor>{lr_tensor.toTensor()}, arg("lr").toDouble(),
        arg("p").toDouble(), arg("mode").toInt(), arg("seed").toInt(), arg("offset").toInt(),
        arg("rng_state").isNone() ? OptTensor() : OptTensor(arg("rng_state").toTensor()), 0);
    torch::jit::drop(*stack, nargs);
    torch::jit::push(*stack, std::move(outs[0]));
    return;
  }
  const c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::FuncTorchBatched);
  const auto layer = at::functorch::maybeCurrentDynamicLayer();
  TORCH_INTERNAL_ASSERT(layer.has_value(), name, "'s batching rule ran outside vmap");
  const int64_t level = layer->layerId(), size = layer->batchSize().guard_int(__FILE__, __LINE__);
  std::vector<size_t> where;  // the positions of the tensor arguments the batch runs over
  std::vector<Tensor> fronts;
  bool any = false;
  for (size_t i = 0; i < nargs; ++i) {
    c10::IValue& v = (*stack)[stack->size() - nargs + i];
    if (!v.isTensor() || args[i].name() == "rng_state") continue;
    where.push_back(i);
    fronts.push_back(front(v.toTensor(), level, size, any));
  }
  if (!any) return handle.callBoxed(stack);  // nothing batched at this level: the op itself, one level down
  const bool noisy = [&] {
    for (const auto& a : args) {
      if (a.name() == "deterministic") return !arg("deterministic").toBool();
    }
    return noise_mode(arg("mode").toInt(), arg("p").toDouble()) != kNone;
  }();
  const size_t nret = handle.schema().returns().size();
  std::vector<Tensor> outs(nret);
  std::vector<c10::IValue> call(stack->end() - nargs, stack->end());
  torch::jit::drop(*stack, nargs);
  if (noisy && noise_randomness(level, name.c_str()) == at::functorch::RandomnessType::Same) {
    std::vector<std::vector<Tensor>> per(nret);  // every element the unbatched call's noise
    for (int64_t e = 0; e < size; ++e) {
      torch::jit::Stack s = call;
      for (size_t j = 0; j < where.size(); ++j) s[where[j]] = fronts[j].select(0, e);
      handle.callBoxed(&s);
      for (size_t r = 0; r < nret; ++r) per[r].push_back(s[r].toTensor());
    }
    for (size_t r = 0; r < nret; ++r) outs[r] = at::stack(per[r]);
  } else {  // one call on (size, span) rows: row e's stream starts at offset + e * span
    // Rows padded where numel is not a multiple of 4, out of place (the tensors may be batched at
    // an outer level); element e's output is the first numel of its row.
    const auto shape = fronts[0].sizes();
    const int64_t n = c10::multiply_integers(shape.begin() + 1, shape.end()), width = span(n);
    torch::jit::Stack s = call;
    for (size_t j = 0; j < where.size(); ++j) {
      const Tensor rows = fronts[j].reshape({size, n});
      s[where[j]] = width == n ? rows : at::constant_pad_nd(rows, {0, width - n});
    }
    handle.callBoxed(&s);
    for (size_t r = 0; r < nret; ++r) {
      const Tensor o = s[r].toTensor();
      outs[r] = (width == n ? o : o.narrow(1, 0, n)).view(shape);
    }
  }
  for (Tensor& o : outs) torch::jit::push(*stack, at::functorch::makeBatched(std::move(o), 0, level));
}

template <Namespace N>
void batching_kernels(torch::Library& m) {
  m.impl("dropgrad_step", TORCH_FN(dropgrad_step_batched<N>));
  // Every other op of the table that draws noise (a seed argument) on tensors, not lists: the
  // elementwise rule. (dropgrad_step_, in place for optimizers, has no rule of its own.)
  for (const std::string schema : op_schemas()) {
    if (schema.find("int seed") == std::string::npos || schema.find("[]") != std::string::npos) continue;
    m.impl(schema.substr(0, schema.find('(')).c_str(),
           torch::CppFunction::makeFromBoxedFunction<&elementwise_batched<N>>());
  }
}

}  // namespace

void register_batching(torch::Library& m, Namespace ns) {
  for_namespace(ns, [&](auto n) { batching_kernels<decltype(n)::value>(m); });
}

}  // namespace dg

TORCH_LIBRARY_IMPL(dropgrad, FuncTorchBatched, m) { dg::register_batching(m, dg::kDropgrad); }
TORCH_LIBRARY_IMPL(dropgrad_triton, FuncTorchBatched, m) { dg::register_batching(m, dg::kTriton); }
