// CUDA kernels of the dropgrad:: ops. One thread handles one Philox counter, i.e. four
// consecutive elements (the contract's unit), with 16-byte loads and stores where aligned.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launchers.h"

namespace dg_cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A v);
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float from_acc<float, float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double, double>(double v) { return v; }

// Four consecutive elements starting at a multiple of 4: one vector access when the whole group
// is in range and the base pointer is aligned to the group (always, for torch's allocations).
template <typename T>
struct alignas(4 * sizeof(T)) Group { T v[4]; };

template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t i, int64_t n, bool vec, T out[4]) {
  if (vec && i + 3 < n) {
    const Group<T> g = *reinterpret_cast<const Group<T>*>(p + i);
    for (int k = 0; k < 4; ++k) out[k] = g.v[k];
  } else {
    for (int k = 0; k < 4; ++k) out[k] = i + k < n ? p[i + k] : T{};  // T{}: the half types have no T(0) here
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, int64_t i, int64_t n, bool vec, const T in[4]) {
  if (vec && i + 3 < n) {
    Group<T> g;
    for (int k = 0; k < 4; ++k) g.v[k] = in[k];
    *reinterpret_cast<Group<T>*>(p + i) = g;
  } else {
    for (int k = 0; k < 4; ++k) if (i + k < n) p[i + k] = in[k];
  }
}

__host__ __device__ __forceinline__ bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

__device__ __forceinline__ void noise_or_ones(const dg::Stream& st, uint64_t q, float n[4]) {
  if (st.np.mode == dg::kNone) {
    for (int k = 0; k < 4; ++k) n[k] = 1.0f;
  } else {
    dg::noise4(st.np, q, st.k0, st.k1, n);
  }
}

// The stream a kernel runs: the host's, or the one read from rng.state (see launchers.h).
__device__ __forceinline__ dg::Stream resolve(const Rng& rng, int64_t& q0) {
  dg::Stream st = rng.st;
  if (rng.state) {
    const uint64_t seed = static_cast<uint64_t>(rng.state[0]);
    st.k0 = static_cast<uint32_t>(seed);
    st.k1 = static_cast<uint32_t>(seed >> 32);
    q0 += rng.state[1] / 4;
  }
  return st;
}

// Grid-stride loop over the counters [0, ceil(n / 4)) of one tensor.
#define DG_FOR_EACH_COUNTER(j, n)                                                              \
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < ((n) + 3) / 4; \
       j += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void __launch_bounds__(kThreads) noise_kernel(float* out, int64_t n, Rng rng, int64_t q0) {
  const dg::Stream st = resolve(rng, q0);
  const bool vec = aligned(out, 16);
  DG_FOR_EACH_COUNTER(j, n) {
    float z[4];
    noise_or_ones(st, q0 + j, z);
    store4(out, 4 * j, n, vec, z);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) drop_grad_kernel(const T* grad, T* out, int64_t n, Rng rng, int64_t q0) {
  const dg::Stream st = resolve(rng, q0);
  using A = typename Acc<T>::type;
  const bool vec = aligned(grad, 4 * sizeof(T)) && aligned(out, 4 * sizeof(T));
  DG_FOR_EACH_COUNTER(j, n) {
    float z[4];
    T g[4], o[4];
    noise_or_ones(st, q0 + j, z);
    load4(grad, 4 * j, n, vec, g);
    for (int k = 0; k < 4; ++k) o[k] = from_acc<T, A>(to_acc(g[k]) * static_cast<A>(z[k]));
    store4(out, 4 * j, n, vec, o);
  }
}

// param - lr * (grad * n) for the counters [c0, c1) of one tensor.
template <typename T>
__device__ __forceinline__ void update_counters(const T* param, const T* grad, const LearningRate& lr, T* out, int64_t n,
                                                const dg::Stream& st, int64_t q0, int64_t c0, int64_t c1, int64_t stride) {
  using A = typename Acc<T>::type;
  const T* lr_vec = static_cast<const T*>(lr.lr_vec);
  const A lr_s = lr.lr_ptr ? *static_cast<const A*>(lr.lr_ptr) : static_cast<A>(lr.lr_value);
  const size_t b = 4 * sizeof(T);
  const bool vec = aligned(param, b) && aligned(grad, b) && aligned(out, b) && (!lr_vec || aligned(lr_vec, b));
  for (int64_t j = c0; j < c1; j += stride) {
    float z[4];
    T w[4], g[4], l[4], o[4];
    noise_or_ones(st, q0 + j, z);
    load4(param, 4 * j, n, vec, w);
    load4(grad, 4 * j, n, vec, g);
    if (lr_vec) load4(lr_vec, 4 * j, n, vec, l);
    for (int k = 0; k < 4; ++k) {
      const A gn = st.np.mode == dg::kNone ? to_acc(g[k]) : to_acc(g[k]) * static_cast<A>(z[k]);
      o[k] = from_acc<T, A>(to_acc(w[k]) - (lr_vec ? to_acc(l[k]) : lr_s) * gn);
    }
    store4(out, 4 * j, n, vec, o);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) update_kernel(const T* param, const T* grad, LearningRate lr, T* out, int64_t n,
                                                          Rng rng, int64_t q0) {
  const dg::Stream st = resolve(rng, q0);
  update_counters(param, grad, lr, out, n, st, q0, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                  (n + 3) / 4, static_cast<int64_t>(gridDim.x) * blockDim.x);
}

// Multi-tensor apply in the way of apex: up to kListSize tensors and kMaxBlocks chunks of
// kChunk counters travel in the kernel's argument block; each CUDA block runs one chunk.
constexpr int kListSize = 24;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 2048;  // counters a chunk: 8192 elements, 8 per thread at 256 threads

struct StepList {
  StepTensor t[kListSize];
  int16_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

template <typename T>
__global__ void __launch_bounds__(kThreads) step_kernel(StepList list, Rng rng) {
  const StepTensor& t = list.t[list.block_tensor[blockIdx.x]];
  int64_t q0 = t.q0;
  const dg::Stream st = resolve(rng, q0);
  const int64_t c0 = static_cast<int64_t>(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t c1 = c0 + kChunk < (t.numel + 3) / 4 ? c0 + kChunk : (t.numel + 3) / 4;
  update_counters(static_cast<const T*>(t.param), static_cast<const T*>(t.grad), t.lr, static_cast<T*>(t.out), t.numel,
                  st, q0, c0 + threadIdx.x, c1, blockDim.x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) meta_dropout_kernel(const T* f, const T* a, T* out, int64_t n, Rng rng,
                                                                int64_t q0) {
  const dg::Stream st = resolve(rng, q0);
  using A = typename Acc<T>::type;
  const size_t b = 4 * sizeof(T);
  const bool vec = aligned(f, b) && aligned(a, b) && aligned(out, b);
  DG_FOR_EACH_COUNTER(j, n) {
    float eps[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    T fv[4], av[4], o[4];
    if (st.np.mode != dg::kNone) dg::noise4(st.np, q0 + j, st.k0, st.k1, eps);
    load4(f, 4 * j, n, vec, fv);
    load4(a, 4 * j, n, vec, av);
    for (int k = 0; k < 4; ++k) {
      const A z = st.np.mode != dg::kNone ? to_acc(av[k]) + static_cast<A>(eps[k]) : to_acc(av[k]);
      o[k] = from_acc<T, A>(to_acc(fv[k]) * dg::softplus(z));
    }
    store4(out, 4 * j, n, vec, o);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) meta_dropout_backward_kernel(const T* gout, const T* f, const T* a, T* gf,
                                                                         T* ga, int64_t n, Rng rng, int64_t q0) {
  const dg::Stream st = resolve(rng, q0);
  using A = typename Acc<T>::type;
  const size_t b = 4 * sizeof(T);
  const bool vec = aligned(gout, b) && aligned(f, b) && aligned(a, b) && aligned(gf, b) && aligned(ga, b);
  DG_FOR_EACH_COUNTER(j, n) {
    float eps[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    T gv[4], fv[4], av[4], o1[4], o2[4];
    if (st.np.mode != dg::kNone) dg::noise4(st.np, q0 + j, st.k0, st.k1, eps);  // regenerated, never saved
    load4(gout, 4 * j, n, vec, gv);
    load4(f, 4 * j, n, vec, fv);
    load4(a, 4 * j, n, vec, av);
    for (int k = 0; k < 4; ++k) {
      const A z = st.np.mode != dg::kNone ? to_acc(av[k]) + static_cast<A>(eps[k]) : to_acc(av[k]);
      o1[k] = from_acc<T, A>(to_acc(gv[k]) * dg::softplus(z));
      o2[k] = from_acc<T, A>((to_acc(gv[k]) * to_acc(fv[k])) * dg::softplus_grad(z));
    }
    store4(gf, 4 * j, n, vec, o1);
    store4(ga, 4 * j, n, vec, o2);
  }
}

__global__ void __launch_bounds__(kThreads) philox_kernel(const int64_t* counter, const int64_t* key, int64_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t c[4];
    for (int k = 0; k < 4; ++k) c[k] = static_cast<uint32_t>(counter[4 * i + k]);
    dg::philox4x32_10(c, static_cast<uint32_t>(key[2 * i]), static_cast<uint32_t>(key[2 * i + 1]));
    for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<int64_t>(c[k]);
  }
}

unsigned blocks_for(int64_t work_items) {
  const int64_t b = (work_items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);  // grid-stride covers the rest
}

template <typename F>
void dispatch(DType dt, const F& f) {
  switch (dt) {
    case DType::kFloat: f(float()); break;
    case DType::kDouble: f(double()); break;
    case DType::kHalf: f(__half()); break;
    case DType::kBFloat16: f(__nv_bfloat16()); break;
  }
}

}  // namespace

void noise(float* out, int64_t n, const Rng& rng, int64_t q0, cudaStream_t stream) {
  if (n == 0) return;
  noise_kernel<<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(out, n, rng, q0);
}

void drop_grad(DType dt, const void* grad, void* out, int64_t n, const Rng& rng, int64_t q0, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    drop_grad_kernel<T><<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(static_cast<const T*>(grad), static_cast<T*>(out),
                                                                          n, rng, q0);
  });
}

void dropgrad_update(DType dt, const void* param, const void* grad, const LearningRate& lr, void* out, int64_t n,
                     const Rng& rng, int64_t q0, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    update_kernel<T><<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(
        static_cast<const T*>(param), static_cast<const T*>(grad), lr, static_cast<T*>(out), n, rng, q0);
  });
}

void dropgrad_step(DType dt, const StepTensor* tensors, int count, const Rng& rng, cudaStream_t stream) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    StepList list;
    int nt = 0, nb = 0;
    auto flush = [&] {
      if (nb > 0) step_kernel<T><<<nb, kThreads, 0, stream>>>(list, rng);
      nt = nb = 0;
    };
    for (int k = 0; k < count; ++k) {
      const int64_t chunks = ((tensors[k].numel + 3) / 4 + kChunk - 1) / kChunk;
      bool in_list = false;
      for (int64_t c = 0; c < chunks; ++c) {
        if (!in_list) {  // (re)enter tensor k: at its first chunk, or after a flush mid-tensor
          if (nt == kListSize) flush();
          list.t[nt++] = tensors[k];
          in_list = true;
        }
        list.block_tensor[nb] = static_cast<int16_t>(nt - 1);
        list.block_chunk[nb] = static_cast<int32_t>(c);
        if (++nb == kMaxBlocks) {
          flush();
          in_list = false;
        }
      }
    }
    flush();
  });
}

void meta_dropout(DType dt, const void* f, const void* a, void* out, int64_t n, const Rng& rng, int64_t q0,
                  cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    meta_dropout_kernel<T><<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(
        static_cast<const T*>(f), static_cast<const T*>(a), static_cast<T*>(out), n, rng, q0);
  });
}

void meta_dropout_backward(DType dt, const void* grad_out, const void* f, const void* a, void* gf, void* ga, int64_t n,
                           const Rng& rng, int64_t q0, cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    meta_dropout_backward_kernel<T><<<blocks_for((n + 3) / 4), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(f), static_cast<const T*>(a), static_cast<T*>(gf),
        static_cast<T*>(ga), n, rng, q0);
  });
}

__global__ void unpack_kernel(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                              uint32_t offset_intragraph, bool captured, int64_t* out) {
  // What at::cuda::philox::unpack does, on the raw fields: under graph capture the generator's
  // seed and offset are read from device memory when the graph replays.
  out[0] = static_cast<int64_t>(captured ? static_cast<uint64_t>(*seed_ptr) : seed);
  out[1] = 4 * static_cast<int64_t>(captured ? static_cast<uint64_t>(*offset_ptr) + offset_intragraph : offset);
}

void unpack_generator_state(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                            uint32_t offset_intragraph, bool captured, int64_t* out, cudaStream_t stream) {
  unpack_kernel<<<1, 1, 0, stream>>>(seed, seed_ptr, offset, offset_ptr, offset_intragraph, captured, out);
}

void philox4x32_10(const int64_t* counter, const int64_t* key, int64_t* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  philox_kernel<<<blocks_for(n), kThreads, 0, stream>>>(counter, key, out, n);
}

}  // namespace dg_cuda
