// The GPU build of the kernels in kernels.cuh: one __global__ wrapper runs a kernel functor at
// the thread's index; DeviceLaunch launches it with the plans of kernels.cuh.
#include <stdexcept>
#include <string>
#include <typeinfo>

#include "kernels.cuh"

namespace dg_cuda {

// After every launch, as C10_CUDA_KERNEL_LAUNCH_CHECK does (this file includes no torch header):
// a launch that fails (bad configuration, no kernel image for the GPU) raises here, naming the
// kernel, instead of at some later, unrelated CUDA call. The dispatcher turns it into a
// RuntimeError in Python.
static void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dropgrad_cuda: launching ") + kernel + " failed: " + cudaGetErrorString(err));
  }
}

template <class K>
__global__ void __launch_bounds__(kThreads) run(const K kernel) {
  kernel(Idx{blockIdx.x, threadIdx.x, gridDim.x, blockDim.x});
}

template <class K>
void DeviceLaunch::operator()(int64_t grid, const K& kernel) const {
  run<K><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(kernel);
  check_launch(typeid(K).name());  // the functor's mangled name: which kernel and dtype
}

namespace {

__global__ void unpack_kernel(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                              uint32_t offset_intragraph, bool captured, int64_t* out) {
  // What at::cuda::philox::unpack does, on the raw fields: under graph capture the generator's
  // seed and offset are read from device memory when the graph replays.
  out[0] = static_cast<int64_t>(captured ? static_cast<uint64_t>(*seed_ptr) : seed);
  out[1] = 4 * static_cast<int64_t>(captured ? static_cast<uint64_t>(*offset_ptr) + offset_intragraph : offset);
}

}  // namespace

void unpack_generator_state(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                            uint32_t offset_intragraph, bool captured, int64_t* out, cudaStream_t stream) {
  unpack_kernel<<<1, 1, 0, stream>>>(seed, seed_ptr, offset, offset_ptr, offset_intragraph, captured, out);
  check_launch("unpack_kernel");
}

DG_DEVICE_LAUNCH_PLANS(template)

}  // namespace dg_cuda
