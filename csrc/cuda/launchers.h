// Host entry points of the CUDA kernels, in plain C++ types so that dropgrad_cuda.cu needs
// no torch header (nvcc then compiles only the kernels and the shared math).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../dropgrad_math.h"

namespace dg_cuda {

enum class DType { kFloat, kDouble, kHalf, kBFloat16 };

// lr: lr_vec (the param's dtype, full shape) if set, else *lr_ptr (the op-math type, device) if
// set, else lr_value. Reading a tensor lr on the device avoids a host sync.
struct LearningRate {
  const void* lr_vec;
  const void* lr_ptr;
  double lr_value;
};

struct StepTensor {
  const void* param;
  const void* grad;
  void* out;
  LearningRate lr;
  int64_t numel;
  int64_t q0;  // first Philox counter of the tensor's stream
};

// Where a kernel's stream comes from: the host's key and first counter, unless `state` (a device
// int64 [seed, offset], see csrc/ops.cpp) is set; then its seed is the key and offset / 4 is
// added to every counter, read on the device when the kernel runs (CUDA-graph safe).
struct Rng {
  dg::Stream st;
  const int64_t* state;
};

void noise(float* out, int64_t n, const Rng& rng, int64_t q0, cudaStream_t stream);
void drop_grad(DType dt, const void* grad, void* out, int64_t n, const Rng& rng, int64_t q0, cudaStream_t stream);
void dropgrad_update(DType dt, const void* param, const void* grad, const LearningRate& lr, void* out, int64_t n,
                     const Rng& rng, int64_t q0, cudaStream_t stream);
void dropgrad_step(DType dt, const StepTensor* tensors, int count, const Rng& rng, cudaStream_t stream);
void meta_dropout(DType dt, const void* f, const void* a, void* out, int64_t n, const Rng& rng, int64_t q0,
                  cudaStream_t stream);
void meta_dropout_backward(DType dt, const void* grad_out, const void* f, const void* a, void* gf, void* ga, int64_t n,
                           const Rng& rng, int64_t q0, cudaStream_t stream);
void philox4x32_10(const int64_t* counter, const int64_t* key, int64_t* out, int64_t n, cudaStream_t stream);
// Reserves `counters` Philox counters of torch's CUDA generator (state from philox_cuda_state,
// passed as its raw fields) and writes [seed, 4 * offset] to out, on the device.
void unpack_generator_state(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                            uint32_t offset_intragraph, bool captured, int64_t* out, cudaStream_t stream);

}  // namespace dg_cuda
