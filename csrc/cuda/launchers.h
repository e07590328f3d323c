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

void noise(float* out, int64_t n, const dg::Stream& st, int64_t q0, cudaStream_t stream);
void drop_grad(DType dt, const void* grad, void* out, int64_t n, const dg::Stream& st, int64_t q0, cudaStream_t stream);
void dropgrad_update(DType dt, const void* param, const void* grad, const LearningRate& lr, void* out, int64_t n,
                     const dg::Stream& st, int64_t q0, cudaStream_t stream);
void dropgrad_step(DType dt, const StepTensor* tensors, int count, const dg::Stream& st, cudaStream_t stream);
void meta_dropout(DType dt, const void* f, const void* a, void* out, int64_t n, const dg::Stream& st, int64_t q0,
                  cudaStream_t stream);
void meta_dropout_backward(DType dt, const void* grad_out, const void* f, const void* a, void* gf, void* ga, int64_t n,
                           const dg::Stream& st, int64_t q0, cudaStream_t stream);
void philox4x32_10(const int64_t* counter, const int64_t* key, int64_t* out, int64_t n, cudaStream_t stream);

}  // namespace dg_cuda
