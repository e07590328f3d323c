// dropgrad_step's batching rule for torch.func.vmap, in C++ for its cost: a meta-batch's parameter
// lists are its biggest vmap call (a Conv-4 list is 36 tensors in, 18 out), and unwrapping,
// rearranging and wrapping them in Python cost more than the whole per-task loop it replaces.
// The other ops' rules are Python (dropgrad_cuda/_batching.py), one tensor or a few each.
//
// One kernel call serves the whole batch: element e's lists become lists e * rows .. of one call
// with `batch` (csrc/ops.cpp), so element e's stream starts e spans of its call later, as vmap's
// randomness="different" asks (docs/noise_contract.md, "Batched streams"); a call that is itself
// a batch of lists (a nested vmap, a backward under vmap) folds its lists into the same batch.
//
// Private API: at::functorch's DynamicLayer and BatchedTensorImpl, as PyTorch's own C++ batching
// rules use them (unchanged torch 2.11 to 2.15); torch.library.register_vmap is the public way,
// and its Python pytree passes are the cost this file removes.
#include <ATen/ATen.h>
#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/functorch/DynamicLayer.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "autograd.h"
#include "dropgrad_math.h"
#include "op_handles.h"

namespace dg {

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

namespace {

// A list's tensors at one vmap level: each batched one's value with its batch dimension first,
// each other one expanded to the batch.
struct Unwrapped {
  std::vector<Tensor> fronts;
  std::vector<bool> batched;
  bool any = false;

  Unwrapped(at::TensorList ts, int64_t level, int64_t size) {
    for (const Tensor& t : ts) {
      const auto* impl = at::functorch::maybeGetBatchedImpl(t);
      const bool here = impl != nullptr && impl->level() == level;
      batched.push_back(here);
      any = any || here;
      if (here) {
        fronts.push_back(impl->bdim() == 0 ? impl->value() : impl->value().movedim(impl->bdim(), 0));
      } else {
        std::vector<int64_t> shape{size};
        shape.insert(shape.end(), t.sizes().begin(), t.sizes().end());
        fronts.push_back(t.expand(shape));
      }
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
  const bool noisy = mode == kNormal || (mode != kNone && p > 0);  // as dg::make_stream: "normal" ignores p
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

}  // namespace

void register_batching(torch::Library& m, Namespace ns) {
  switch (ns) {
    case kDropgrad: return m.impl("dropgrad_step", TORCH_FN(dropgrad_step_batched<kDropgrad>)), void();
    case kEmulated: return m.impl("dropgrad_step", TORCH_FN(dropgrad_step_batched<kEmulated>)), void();
    case kTriton: return m.impl("dropgrad_step", TORCH_FN(dropgrad_step_batched<kTriton>)), void();
  }
}

}  // namespace dg

TORCH_LIBRARY_IMPL(dropgrad, FuncTorchBatched, m) { dg::register_batching(m, dg::kDropgrad); }
TORCH_LIBRARY_IMPL(dropgrad_triton, FuncTorchBatched, m) { dg::register_batching(m, dg::kTriton); }
