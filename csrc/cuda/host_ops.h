// The host side of the dropgrad:: ops' CUDA kernels: tensor checks, layouts, learning rates and
// the multi-tensor grouping, then the launch plans of kernels.cuh. Written once over a device
// policy D, so the GPU build (dropgrad_cuda_ops.cpp) and the CPU emulator (csrc/emulated) run the
// same host code; D gives the device type, a device guard and the launcher.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../ops.h"
#include "kernels.cuh"

namespace dg_cuda {
namespace host {

using OptTensor = c10::optional<at::Tensor>;

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "dropgrad CUDA kernels take float16, bfloat16, float32 or float64, got ", t.scalar_type());
  }
}

inline at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <class D>
void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().type() == D::kDevice, name, " must be a ", c10::DeviceTypeName(D::kDevice), " tensor");
  dtype_of(t);
}

template <class D>
void check_long(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().type() == D::kDevice && t.scalar_type() == at::kLong, name, " must be a ",
              c10::DeviceTypeName(D::kDevice), " int64 tensor");
}

inline Rng rng(double p, int64_t mode, int64_t seed, const OptTensor& rng_state, const at::Tensor& like) {
  const int64_t* state = nullptr;
  if (rng_state.has_value() && rng_state->defined()) {
    TORCH_CHECK(rng_state->scalar_type() == at::kLong && rng_state->numel() == 2 && rng_state->is_contiguous() &&
                    rng_state->device() == like.device(),
                "rng_state must be a contiguous int64 tensor [seed, offset] on ", like.device());
    state = rng_state->data_ptr<int64_t>();
  }
  return {dg::make_stream(p, mode, seed), state};
}

// A tensor lr (its form: dg::lr_form) stays on the device (no host sync): a full one in the
// param's dtype and the output's layout, a one-element one converted to the op-math type; `keep`
// holds the converted tensor alive until the launch. *shared: one list's lr shared by a batch.
inline LearningRate learning_rate(const OptTensor& lr_tensor, double lr, const at::Tensor& param, const at::Tensor& out,
                                  at::Tensor& keep, int64_t batch = 0, bool* shared = nullptr) {
  if (!lr_tensor.has_value() || !lr_tensor->defined()) return {nullptr, nullptr, lr};
  const dg::LrForm form = dg::lr_form(*lr_tensor, param, batch);
  if (form == dg::LrForm::kScalar) {
    keep = lr_tensor->reshape({}).to(param.device(), opmath(param.scalar_type())).contiguous();
    return {nullptr, keep.data_ptr(), 0.0};
  }
  if (shared) *shared = form == dg::LrForm::kShared;
  keep = form == dg::LrForm::kShared ? lr_tensor->contiguous() : dg::in_layout(*lr_tensor, out);
  return {keep.data_ptr(), nullptr, 0.0};
}

template <class D>
at::Tensor philox4x32_10(const at::Tensor& counter, const at::Tensor& key) {
  check_long<D>(counter, "counter");
  check_long<D>(key, "key");
  TORCH_CHECK(counter.dim() >= 1 && counter.size(-1) == 4, "counter must have shape (..., 4)");
  TORCH_CHECK(key.dim() >= 1 && key.size(-1) == 2, "key must have shape (..., 2)");
  TORCH_CHECK(key.numel() / 2 == counter.numel() / 4, "key must hold one (k0, k1) pair per counter");
  const typename D::Guard guard(counter.device());
  const at::Tensor c = counter.contiguous(), k = key.contiguous();
  at::Tensor out = at::empty_like(c);
  dg_cuda::philox4x32_10(D::launch(), c.data_ptr<int64_t>(), k.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                         c.numel() / 4);
  return out;
}

template <class D>
at::Tensor noise(const at::Tensor& like, double p, int64_t mode, int64_t seed, int64_t offset,
                 const OptTensor& rng_state) {
  dg::check_stream_args(p, mode, offset, like.numel());
  TORCH_CHECK(like.device().type() == D::kDevice, "like must be a ", c10::DeviceTypeName(D::kDevice), " tensor");
  const typename D::Guard guard(like.device());
  at::Tensor out = dg::empty_in_layout(like, like.options().dtype(at::kFloat));
  dg_cuda::noise(D::launch(), out.data_ptr<float>(), out.numel(), rng(p, mode, seed, rng_state, like), offset / 4);
  return out;
}

template <class D>
at::Tensor drop_grad(const at::Tensor& grad, double p, int64_t mode, int64_t seed, int64_t offset,
                     const OptTensor& rng_state) {
  dg::check_stream_args(p, mode, offset, grad.numel());
  dg::check_float(grad, "grad");
  check<D>(grad, "grad");
  const typename D::Guard guard(grad.device());
  at::Tensor out = dg::empty_in_layout(grad, grad.options());
  const at::Tensor g = dg::in_layout(grad, out);
  dg_cuda::drop_grad(D::launch(), dtype_of(g), g.data_ptr(), out.data_ptr(), g.numel(),
                     rng(p, mode, seed, rng_state, g), offset / 4);
  return out;
}

template <class D>
at::Tensor dropgrad_update(const at::Tensor& param, const at::Tensor& grad, const OptTensor& lr_tensor, double lr,
                           double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(p, mode, offset, param.numel());
  dg::check_pair(param, grad, "param", "grad");
  if (lr_tensor.has_value() && lr_tensor->defined()) dg::check_lr(*lr_tensor, param, "lr");
  check<D>(param, "param");
  const typename D::Guard guard(param.device());
  at::Tensor out = dg::empty_in_layout(param, param.options());
  const at::Tensor w = dg::in_layout(param, out), g = dg::in_layout(grad, out);
  at::Tensor keep;
  const LearningRate l = learning_rate(lr_tensor, lr, w, out, keep);
  dg_cuda::dropgrad_update(D::launch(), dtype_of(w), w.data_ptr(), g.data_ptr(), l, out.data_ptr(), w.numel(),
                           rng(p, mode, seed, rng_state, w), offset / 4);
  return out;
}

// One multi-tensor launch sequence per dtype present; tensor k's stream starts where tensor
// k-1's ends, rounded up to a multiple of 4 (as on every backend). With batch > 0 each tensor is
// `batch` rows, one per list, list b's stream b list spans after list 0's: a row is one more
// entry of the launch's list, its pointers moved on the host, no kernel of its own. In place, the
// outputs are the params, one that is not dense through a contiguous copy written back after the
// launches.
template <class D>
std::vector<at::Tensor> step(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                             double weight_decay, double p, int64_t mode, int64_t seed, int64_t offset,
                             const OptTensor& rng_state, int64_t batch, bool in_place) {
  dg::check_stream_args(p, mode, offset, dg::list_span(params));
  dg::check_lists(params, grads, lrs, batch);
  const size_t nt = params.size();
  const int64_t list_span = dg::batch_list_span(params, batch), rows = std::max<int64_t>(batch, 1);
  std::vector<at::Tensor> ws(nt), gs(nt), outs(nt), keep(nt);
  std::vector<StepTensor> by_dtype[4];
  int64_t q = offset / 4;
  for (size_t k = 0; k < nt; ++k) {
    check<D>(params[k], "params");
    // In place, a dense param is written where it lies; another through a contiguous copy.
    outs[k] = !in_place ? dg::empty_in_layout(params[k], params[k].options(), batch > 0)
              : params[k].is_non_overlapping_and_dense() ? params[k] : params[k].contiguous();
    ws[k] = in_place ? outs[k] : dg::in_layout(params[k], outs[k]);
    gs[k] = dg::in_layout(grads[k], outs[k]);
    bool shared_lr = false;
    const auto l = learning_rate(lrs.empty() ? OptTensor() : OptTensor(lrs[k]), lr, ws[k], outs[k], keep[k], batch,
                                 &shared_lr);
    const int64_t row = ws[k].numel() / rows, bytes = row * ws[k].element_size();
    for (int64_t b = 0; b < rows; ++b) {
      LearningRate lb = l;
      if (l.lr_vec && !shared_lr) lb.lr_vec = static_cast<const char*>(l.lr_vec) + b * bytes;
      by_dtype[static_cast<int>(dtype_of(ws[k]))].push_back(
          {static_cast<const char*>(ws[k].data_ptr()) + b * bytes, static_cast<const char*>(gs[k].data_ptr()) + b * bytes,
           static_cast<char*>(outs[k].data_ptr()) + b * bytes, lb, row, q + b * (list_span / 4)});
    }
    q += dg::span(row) / 4;
  }
  if (nt == 0) return outs;
  const typename D::Guard guard(params[0].device());
  const Rng r = rng(p, mode, seed, rng_state, params[0]);
  for (int d = 0; d < 4; ++d) {
    if (!by_dtype[d].empty()) {
      dg_cuda::dropgrad_step(D::launch(), static_cast<DType>(d), by_dtype[d].data(),
                             static_cast<int>(by_dtype[d].size()), r, weight_decay);
    }
  }
  for (size_t k = 0; in_place && k < nt; ++k) {
    if (!outs[k].is_same(params[k])) params[k].copy_(outs[k]);
  }
  return outs;
}

template <class D>
std::vector<at::Tensor> dropgrad_step(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                                      double p, int64_t mode, int64_t seed, int64_t offset,
                                      const OptTensor& rng_state, int64_t batch) {
  return step<D>(params, grads, lrs, lr, 0.0, p, mode, seed, offset, rng_state, batch, false);
}

template <class D>
void dropgrad_step_(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, double weight_decay,
                    double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  step<D>(params, grads, lrs, lr, weight_decay, p, mode, seed, offset, rng_state, 0, true);
}

template <class D>
at::Tensor meta_dropout(const at::Tensor& f, const at::Tensor& a, bool deterministic, int64_t seed, int64_t offset,
                        const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
  dg::check_pair(f, a, "f", "a");
  check<D>(f, "f");
  const typename D::Guard guard(f.device());
  at::Tensor out = dg::empty_in_layout(f, f.options());
  const at::Tensor fc = dg::in_layout(f, out), ac = dg::in_layout(a, out);
  dg_cuda::meta_dropout(D::launch(), dtype_of(fc), fc.data_ptr(), ac.data_ptr(), out.data_ptr(), fc.numel(),
                        rng(0.0, deterministic ? dg::kNone : dg::kNormal, seed, rng_state, fc), offset / 4);
  return out;
}

template <class D>
std::tuple<at::Tensor, at::Tensor> meta_dropout_backward(const at::Tensor& grad_out, const at::Tensor& f,
                                                         const at::Tensor& a, bool deterministic, int64_t seed,
                                                         int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
  check<D>(f, "f");
  TORCH_CHECK(grad_out.sizes() == f.sizes() && f.sizes() == a.sizes() && grad_out.device() == f.device() &&
                  a.device() == f.device(),
              "grad_out, f and a must have the same shape and device");
  const typename D::Guard guard(f.device());
  at::Tensor gf = dg::empty_in_layout(f, f.options()), ga = dg::empty_in_layout(f, f.options());
  const at::Tensor g = dg::in_layout(grad_out.to(f.scalar_type()), gf), fc = dg::in_layout(f, gf),
                   ac = dg::in_layout(a, gf);
  dg_cuda::meta_dropout_backward(D::launch(), dtype_of(fc), g.data_ptr(), fc.data_ptr(), ac.data_ptr(), gf.data_ptr(),
                                 ga.data_ptr(), fc.numel(),
                                 rng(0.0, deterministic ? dg::kNone : dg::kNormal, seed, rng_state, fc), offset / 4);
  return {gf, ga};
}

template <class D>
std::tuple<at::Tensor, at::Tensor, at::Tensor> meta_dropout_double_backward(
    const at::Tensor& grad_grad_f, const at::Tensor& grad_grad_a, const at::Tensor& grad_out, const at::Tensor& f,
    const at::Tensor& a, bool deterministic, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
  check<D>(f, "f");
  const at::Tensor* ins[5] = {&grad_grad_f, &grad_grad_a, &grad_out, &f, &a};
  for (const at::Tensor* t : ins) {
    TORCH_CHECK(t->sizes() == f.sizes() && t->device() == f.device(),
                "grad_grad_f, grad_grad_a, grad_out, f and a must have the same shape and device");
  }
  const typename D::Guard guard(f.device());
  at::Tensor d_gout = dg::empty_in_layout(f, f.options()), d_f = dg::empty_in_layout(f, f.options()),
             d_a = dg::empty_in_layout(f, f.options());
  at::Tensor c[5];
  const void* in[5];
  for (int i = 0; i < 5; ++i) {
    c[i] = dg::in_layout(ins[i]->to(f.scalar_type()), d_f);
    in[i] = c[i].data_ptr();
  }
  void* out[3] = {d_gout.data_ptr(), d_f.data_ptr(), d_a.data_ptr()};
  dg_cuda::meta_dropout_double_backward(D::launch(), dtype_of(c[3]), in, out, c[3].numel(),
                                        rng(0.0, deterministic ? dg::kNone : dg::kNormal, seed, rng_state, c[3]),
                                        offset / 4);
  return {d_gout, d_f, d_a};
}

}  // namespace host

// Registers the ops above for device policy D into a TORCH_LIBRARY_IMPL block.
template <class D>
void register_kernels(torch::Library& m) {
  m.impl("philox4x32_10", &host::philox4x32_10<D>);
  m.impl("noise", &host::noise<D>);
  m.impl("drop_grad", &host::drop_grad<D>);
  m.impl("dropgrad_update", &host::dropgrad_update<D>);
  m.impl("dropgrad_step", &host::dropgrad_step<D>);
  m.impl("dropgrad_step_", &host::dropgrad_step_<D>);
  m.impl("meta_dropout", &host::meta_dropout<D>);
  m.impl("meta_dropout_backward", &host::meta_dropout_backward<D>);
  m.impl("meta_dropout_double_backward", &host::meta_dropout_double_backward<D>);
}

}  // namespace dg_cuda
