// The dropgrad:: ops' CUDA dispatch: tensor checks, layouts and streams on the host, then the
// launchers of dropgrad_cuda.cu. Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in
// cusparse.h, which the system toolkit here lacks.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

#include "launchers.h"

namespace {

using dg_cuda::DType;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "dropgrad CUDA kernels take float16, bfloat16, float32 or float64, got ", t.scalar_type());
  }
}

at::ScalarType opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  dtype_of(t);
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

using OptTensor = c10::optional<at::Tensor>;

dg_cuda::Rng rng(double p, int64_t mode, int64_t seed, const OptTensor& rng_state, const at::Tensor& like) {
  const int64_t* state = nullptr;
  if (rng_state.has_value() && rng_state->defined()) {
    TORCH_CHECK(rng_state->scalar_type() == at::kLong && rng_state->numel() == 2 && rng_state->is_contiguous() &&
                    rng_state->device() == like.device(),
                "rng_state must be a contiguous int64 tensor [seed, offset] on ", like.device());
    state = rng_state->data_ptr<int64_t>();
  }
  return {dg::make_stream(p, mode, seed), state};
}

// [seed, offset] for `numel` elements from torch's CUDA generator, filled on the device.
at::Tensor cuda_rng_state_cuda(const at::Tensor& like, int64_t numel) {
  TORCH_CHECK(like.is_cuda(), "like must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(like.device());
  auto* gen = at::check_generator<at::CUDAGeneratorImpl>(at::cuda::detail::getDefaultCUDAGenerator(like.device().index()));
  at::PhiloxCudaState st;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);  // see PyTorch's note on acquiring it
    st = gen->philox_cuda_state(static_cast<uint64_t>(((numel + 3) / 4 + 3) / 4 * 4));  // counters, a multiple of 4
  }
  at::Tensor out = at::empty({2}, like.options().dtype(at::kLong));
  dg_cuda::unpack_generator_state(st.seed_.val, st.seed_.ptr, st.offset_.val, st.offset_.ptr,
                                  static_cast<uint32_t>(st.offset_intragraph_), st.captured_, out.data_ptr<int64_t>(),
                                  stream());
  return out;
}

// A tensor lr stays on the device (no host sync): a full one in the param's dtype, a one-element
// one converted to the op-math type; `keep` holds the converted tensor alive until the launch.
dg_cuda::LearningRate learning_rate(const OptTensor& lr_tensor, double lr, const at::Tensor& param,
                                    at::Tensor& keep) {
  if (!lr_tensor.has_value() || !lr_tensor->defined()) return {nullptr, nullptr, lr};
  if (lr_tensor->dim() > 0 && lr_tensor->numel() > 1) {
    TORCH_CHECK(lr_tensor->sizes() == param.sizes() && lr_tensor->scalar_type() == param.scalar_type(),
                "a full-shape lr must have param's shape and dtype");
    keep = lr_tensor->contiguous();
    return {keep.data_ptr(), nullptr, 0.0};
  }
  keep = lr_tensor->reshape({}).to(param.device(), opmath(param.scalar_type())).contiguous();
  return {nullptr, keep.data_ptr(), 0.0};
}

at::Tensor philox4x32_10_cuda(const at::Tensor& counter, const at::Tensor& key) {
  TORCH_CHECK(counter.is_cuda() && key.is_cuda(), "counter and key must be CUDA tensors");
  TORCH_CHECK(counter.scalar_type() == at::kLong && key.scalar_type() == at::kLong, "counter and key must be int64");
  TORCH_CHECK(key.numel() / 2 == counter.numel() / 4, "key must hold one (k0, k1) pair per counter");
  const c10::cuda::CUDAGuard guard(counter.device());
  const at::Tensor c = counter.contiguous(), k = key.contiguous();
  at::Tensor out = at::empty_like(c);
  dg_cuda::philox4x32_10(c.data_ptr<int64_t>(), k.data_ptr<int64_t>(), out.data_ptr<int64_t>(), c.numel() / 4, stream());
  return out;
}

at::Tensor noise_cuda(const at::Tensor& like, double p, int64_t mode, int64_t seed, int64_t offset,
                      const OptTensor& rng_state) {
  TORCH_CHECK(like.is_cuda(), "like must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor out = at::empty(like.sizes(), like.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  dg_cuda::noise(out.data_ptr<float>(), out.numel(), rng(p, mode, seed, rng_state, like), offset / 4, stream());
  return out;
}

at::Tensor drop_grad_cuda(const at::Tensor& grad, double p, int64_t mode, int64_t seed, int64_t offset,
                          const OptTensor& rng_state) {
  check(grad, "grad");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  at::Tensor out = at::empty_like(g);
  dg_cuda::drop_grad(dtype_of(g), g.data_ptr(), out.data_ptr(), g.numel(), rng(p, mode, seed, rng_state, g), offset / 4,
                     stream());
  return out;
}

at::Tensor dropgrad_update_cuda(const at::Tensor& param, const at::Tensor& grad, const OptTensor& lr_tensor,
                                double lr, double p, int64_t mode, int64_t seed, int64_t offset,
                                const OptTensor& rng_state) {
  check(param, "param");
  TORCH_CHECK(param.sizes() == grad.sizes() && param.scalar_type() == grad.scalar_type() && grad.is_cuda(),
              "param and grad must have the same shape, dtype and device");
  const c10::cuda::CUDAGuard guard(param.device());
  const at::Tensor w = param.contiguous(), g = grad.contiguous();
  at::Tensor keep;
  const dg_cuda::LearningRate l = learning_rate(lr_tensor, lr, w, keep);
  at::Tensor out = at::empty_like(w);
  dg_cuda::dropgrad_update(dtype_of(w), w.data_ptr(), g.data_ptr(), l, out.data_ptr(), w.numel(),
                           rng(p, mode, seed, rng_state, w), offset / 4, stream());
  return out;
}

// One multi-tensor launch sequence per dtype present; tensor k's stream starts where tensor
// k-1's ends, rounded up to a multiple of 4 (as on every backend).
std::vector<at::Tensor> dropgrad_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                                           double p, int64_t mode, int64_t seed, int64_t offset,
                                           const OptTensor& rng_state) {
  const size_t nt = params.size();
  TORCH_CHECK(grads.size() == nt && (lrs.empty() || lrs.size() == nt), "params, grads and lrs must match in length");
  std::vector<at::Tensor> ws(nt), gs(nt), outs(nt), keep(nt);
  std::vector<dg_cuda::StepTensor> by_dtype[4];
  int64_t q = offset / 4;
  for (size_t k = 0; k < nt; ++k) {
    check(params[k], "params");
    TORCH_CHECK(params[k].sizes() == grads[k].sizes() && params[k].scalar_type() == grads[k].scalar_type() &&
                    params[k].device() == params[0].device() && grads[k].device() == params[0].device(),
                "params[", k, "] and grads[", k, "] must have the same shape, dtype and device");
    ws[k] = params[k].contiguous();
    gs[k] = grads[k].contiguous();
    outs[k] = at::empty_like(ws[k]);
    const auto l = learning_rate(lrs.empty() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(lrs[k]), lr,
                                 ws[k], keep[k]);
    by_dtype[static_cast<int>(dtype_of(ws[k]))].push_back({ws[k].data_ptr(), gs[k].data_ptr(), outs[k].data_ptr(), l,
                                                           ws[k].numel(), q});
    q += (ws[k].numel() + 3) / 4;
  }
  if (nt == 0) return outs;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const dg_cuda::Rng r = rng(p, mode, seed, rng_state, params[0]);
  for (int d = 0; d < 4; ++d) {
    if (!by_dtype[d].empty()) {
      dg_cuda::dropgrad_step(static_cast<DType>(d), by_dtype[d].data(), static_cast<int>(by_dtype[d].size()), r, stream());
    }
  }
  return outs;
}

at::Tensor meta_dropout_cuda(const at::Tensor& f, const at::Tensor& a, bool deterministic, int64_t seed, int64_t offset,
                             const OptTensor& rng_state) {
  check(f, "f");
  TORCH_CHECK(f.sizes() == a.sizes() && f.scalar_type() == a.scalar_type() && a.is_cuda(),
              "f and a must have the same shape, dtype and device");
  const c10::cuda::CUDAGuard guard(f.device());
  const at::Tensor fc = f.contiguous(), ac = a.contiguous();
  at::Tensor out = at::empty_like(fc);
  dg_cuda::meta_dropout(dtype_of(fc), fc.data_ptr(), ac.data_ptr(), out.data_ptr(), fc.numel(),
                        rng(0.0, deterministic ? dg::kNone : dg::kNormal, seed, rng_state, fc), offset / 4, stream());
  return out;
}

std::tuple<at::Tensor, at::Tensor> meta_dropout_backward_cuda(const at::Tensor& grad_out, const at::Tensor& f,
                                                              const at::Tensor& a, bool deterministic, int64_t seed,
                                                              int64_t offset, const OptTensor& rng_state) {
  check(f, "f");
  TORCH_CHECK(grad_out.sizes() == f.sizes() && f.sizes() == a.sizes() && grad_out.is_cuda() && a.is_cuda(),
              "grad_out, f and a must have the same shape and device");
  const c10::cuda::CUDAGuard guard(f.device());
  const at::Tensor g = grad_out.contiguous().to(f.scalar_type()), fc = f.contiguous(), ac = a.contiguous();
  at::Tensor gf = at::empty_like(fc), ga = at::empty_like(fc);
  dg_cuda::meta_dropout_backward(dtype_of(fc), g.data_ptr(), fc.data_ptr(), ac.data_ptr(), gf.data_ptr(), ga.data_ptr(),
                                 fc.numel(), rng(0.0, deterministic ? dg::kNone : dg::kNormal, seed, rng_state, fc),
                                 offset / 4, stream());
  return {gf, ga};
}

}  // namespace

TORCH_LIBRARY_IMPL(dropgrad, CUDA, m) {
  m.impl("philox4x32_10", &philox4x32_10_cuda);
  m.impl("noise", &noise_cuda);
  m.impl("drop_grad", &drop_grad_cuda);
  m.impl("dropgrad_update", &dropgrad_update_cuda);
  m.impl("dropgrad_step", &dropgrad_step_cuda);
  m.impl("meta_dropout", &meta_dropout_cuda);
  m.impl("meta_dropout_backward", &meta_dropout_backward_cuda);
  m.impl("cuda_rng_state", &cuda_rng_state_cuda);
}
