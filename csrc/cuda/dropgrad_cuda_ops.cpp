// The dropgrad:: ops' CUDA dispatch: the host code of host_ops.h on CUDA tensors and streams, and
// the generator state op. Of the CUDA headers, only ATen's generator and c10/cuda's: ATen/cuda/
// CUDAContext.h pulls in cusparse.h, which the system toolkit here lacks.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>

#include "host_ops.h"

namespace {

struct Cuda {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  using Guard = c10::cuda::CUDAGuard;
  static dg_cuda::DeviceLaunch launch() { return {c10::cuda::getCurrentCUDAStream().stream()}; }
};

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
                                  Cuda::launch().stream);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dropgrad, CUDA, m) {
  dg_cuda::register_kernels<Cuda>(m);
  m.impl("cuda_rng_state", &cuda_rng_state_cuda);
}
