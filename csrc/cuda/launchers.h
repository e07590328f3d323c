// Entry points of the CUDA kernels (csrc/cuda/kernels.cuh), in plain C++ types so that the host
// code that calls them needs no CUDA compiler, and the CUDA sources no torch header. Each entry
// point is a launch plan over a launcher L: `launch(grid, kernel)` runs `kernel` over `grid` blocks
// of kThreads threads; DeviceLaunch launches it on a CUDA stream, the emulator's HostLaunch
// (csrc/emulated) runs every thread of it on the CPU.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../dropgrad_math.h"

namespace dg_cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 65535 * 16;  // blocks of a grid-stride launch; the loops cover the rest
// The multi-tensor list of dropgrad_step: tensors and blocks (chunks) a launch carries, and the
// Philox counters of a chunk (2048: 8192 elements, 8 counters or 32 elements per thread at 256 threads).
constexpr int kListSize = 24;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 2048;

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
  void* out;  // param itself for the in-place step
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

// A thread's place in its launch: blockIdx.x, threadIdx.x, gridDim.x, blockDim.x.
struct Idx {
  int64_t block, thread, blocks, threads;
};

struct DeviceLaunch {
  cudaStream_t stream;
  int64_t max_blocks = kMaxGrid;
  template <class K>
  void operator()(int64_t grid, const K& kernel) const;  // dropgrad_cuda.cu
};

template <class L> void noise(const L& launch, float* out, int64_t n, const Rng& rng, int64_t q0);
template <class L>
void drop_grad(const L& launch, DType dt, const void* grad, void* out, int64_t n, const Rng& rng, int64_t q0);
template <class L>
void dropgrad_update(const L& launch, DType dt, const void* param, const void* grad, const LearningRate& lr, void* out,
                     int64_t n, const Rng& rng, int64_t q0);
template <class L>
void dropgrad_step(const L& launch, DType dt, const StepTensor* tensors, int count, const Rng& rng,
                   double weight_decay);
template <class L>
void meta_dropout(const L& launch, DType dt, const void* f, const void* a, void* out, int64_t n, const Rng& rng,
                  int64_t q0);
template <class L>
void meta_dropout_backward(const L& launch, DType dt, const void* grad_out, const void* f, const void* a, void* gf,
                           void* ga, int64_t n, const Rng& rng, int64_t q0);
// in: grad_grad_f, grad_grad_a, grad_out, f, a; out: d grad_out, d f, d a.
template <class L>
void meta_dropout_double_backward(const L& launch, DType dt, const void* const in[5], void* const out[3], int64_t n,
                                  const Rng& rng, int64_t q0);
template <class L>
void philox4x32_10(const L& launch, const int64_t* counter, const int64_t* key, int64_t* out, int64_t n);

// Reserves `counters` Philox counters of torch's CUDA generator (state from philox_cuda_state,
// passed as its raw fields) and writes [seed, 4 * offset] to out, on the device.
void unpack_generator_state(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                            uint32_t offset_intragraph, bool captured, int64_t* out, cudaStream_t stream);

}  // namespace dg_cuda
