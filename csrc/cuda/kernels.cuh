// The CUDA kernels of the dropgrad:: ops and their launch plans, written once for two compilers:
// nvcc builds them for the GPU (dropgrad_cuda.cu), g++ for the CPU emulator (csrc/emulated),
// which runs every launch block by block and thread by thread. A kernel is a functor whose
// operator() is one thread's work given its index; a launch plan calls `launch(grid, kernel)`
// over a launcher L: DeviceLaunch launches `kernel` over `grid` blocks of kThreads threads on a
// CUDA stream, the emulator's HostLaunch runs every thread of it on the CPU. The host code
// (host_ops.h, g++) calls the plans; this file includes no torch header.
// One thread handles one Philox counter, i.e. four consecutive elements (the contract's unit),
// with 16-byte loads and stores where aligned.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

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

// Reserves `counters` Philox counters of torch's CUDA generator (state from philox_cuda_state,
// passed as its raw fields) and writes [seed, 4 * offset] to out, on the device.
void unpack_generator_state(uint64_t seed, const int64_t* seed_ptr, uint64_t offset, const int64_t* offset_ptr,
                            uint32_t offset_intragraph, bool captured, int64_t* out, cudaStream_t stream);

#if defined(DG_EMULATOR)
void emulator_check_aligned(const void* p, size_t bytes);  // records a misaligned access (csrc/emulated)
#endif

namespace kernels {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

DG_HD float to_acc(__half v) { return __half2float(v); }
DG_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
DG_HD float to_acc(float v) { return v; }
DG_HD double to_acc(double v) { return v; }

template <typename T, typename A> DG_HD T from_acc(A v);
template <> DG_HD __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> DG_HD __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
template <> DG_HD float from_acc<float, float>(float v) { return v; }
template <> DG_HD double from_acc<double, double>(double v) { return v; }

DG_HD bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Four consecutive elements starting at a multiple of 4: one vector access when the whole group
// is in range and the base pointer is aligned to the group (always, for torch's allocations).
template <typename T>
struct alignas(4 * sizeof(T)) Group { T v[4]; };

// One 4-element vector access. A misaligned one faults on the GPU; the emulator records it (the
// launch then fails) and reads or writes through memcpy, so the host does not fault first.
template <typename T>
DG_HD Group<T> load_group(const T* p) {
#if defined(DG_EMULATOR)
  emulator_check_aligned(p, sizeof(Group<T>));
  Group<T> g;
  memcpy(&g, p, sizeof(g));
  return g;
#else
  return *reinterpret_cast<const Group<T>*>(p);
#endif
}

template <typename T>
DG_HD void store_group(T* p, const Group<T>& g) {
#if defined(DG_EMULATOR)
  emulator_check_aligned(p, sizeof(Group<T>));
  memcpy(p, &g, sizeof(g));
#else
  *reinterpret_cast<Group<T>*>(p) = g;
#endif
}

// The four elements i .. i + 3 of one Philox counter in tensors of n elements. Vec: all four are
// in range and every pointer is aligned to a group, so each access is one vector access that tests
// no bound; else each element is tested against n.
template <bool Vec>
struct Quad {
  int64_t i, n;
  template <typename T>
  DG_HD void load(const T* p, T out[4]) const {
    if (Vec) {
      const Group<T> g = load_group(p + i);
      for (int k = 0; k < 4; ++k) out[k] = g.v[k];
    } else {
      for (int k = 0; k < 4; ++k) out[k] = i + k < n ? p[i + k] : T{};  // T{}: the half types have no T(0) here
    }
  }
  template <typename T>
  DG_HD void store(T* p, const T in[4]) const {
    if (Vec) {
      Group<T> g;
      for (int k = 0; k < 4; ++k) g.v[k] = in[k];
      store_group(p + i, g);
    } else {
      for (int k = 0; k < 4; ++k) if (i + k < n) p[i + k] = in[k];
    }
  }
};

// f(j, quad) for the counters j = c0, c0 + step, ... below c1 of a tensor of n elements. With
// aligned pointers (vec), the counters whose four elements are all in range run in a loop of their
// own, of vector accesses that test no bound and choose no path (nvcc predicated both paths of a
// per-access choice, and a GPU issues both: 3-7 instructions an element); the rest (the tensor's
// partial last counter, or every counter of misaligned views) in the checked loop.
template <typename F>
DG_HD void for_counters(int64_t n, bool vec, int64_t c0, int64_t c1, int64_t step, const F& f) {
  int64_t j = c0;
  if (vec) {
    const int64_t whole = n / 4 < c1 ? n / 4 : c1;
    for (; j < whole; j += step) f(j, Quad<true>{4 * j, n});
  }
  for (; j < c1; j += step) f(j, Quad<false>{4 * j, n});
}

// A noise mode as a type: the kernels' loops are instantiated per mode (with_mode), so no loop pass
// tests the mode; on sm_90 the test, its branch and the reloaded constant cost about 2 instructions
// an element, and a noiseless pass filled in ones that nothing read.
template <int M>
using ModeC = std::integral_constant<int, M>;

// f(ModeC<mode>{}) for the stream's mode, one of the modes the op can run (Modes).
template <int... Modes, typename F>
DG_HD void with_mode(const dg::Stream& st, const F& f) {
  ((st.np.mode == Modes ? (f(ModeC<Modes>{}), true) : false) || ...);
}

// The modes of the DropGrad ops (and the raw noise and logit_noise, which run the normal mode), and
// of meta_dropout (noise or deterministic).
#define DG_DROPGRAD_MODES dg::kNone, dg::kBernoulli, dg::kGaussian, dg::kNormal
#define DG_META_MODES dg::kNone, dg::kNormal

template <int M>
DG_HD void noise_or_ones(const dg::Stream& st, uint64_t q, float n[4]) {
  if constexpr (M == dg::kNone) {
    for (int k = 0; k < 4; ++k) n[k] = 1.0f;
  } else {
    dg::noise4<M>(st.np, q, st.keys, n);
  }
}

// The stream a kernel runs: the host's, or the one read from rng.state (see Rng above).
DG_HD dg::Stream resolve(const Rng& rng, int64_t& q0) {
  dg::Stream st = rng.st;
  if (rng.state) {
    const uint64_t seed = static_cast<uint64_t>(rng.state[0]);
    st.keys = dg::seed_keys(seed);
    q0 += rng.state[1] / 4;
  }
  return st;
}

DG_HD int64_t counters(int64_t n) { return (n + 3) / 4; }

// A grid-stride loop's first item and stride.
DG_HD int64_t first(const Idx& t) { return t.block * t.threads + t.thread; }
DG_HD int64_t stride(const Idx& t) { return t.blocks * t.threads; }

// body(stream, mode, Philox counter, quad) for each counter of [0, ceil(n / 4)) this thread owns in
// a grid-stride loop, on the stream of `rng` (see resolve), the mode one of Modes as a ModeC.
template <int... Modes, typename F>
DG_HD void for_each_counter(const Idx& t, int64_t n, bool vec, const Rng& rng, int64_t q0, const F& body) {
  const dg::Stream st = resolve(rng, q0);
  with_mode<Modes...>(st, [&](auto m) {
    for_counters(n, vec, first(t), counters(n), stride(t), [&](int64_t j, const auto& e) { body(st, m, q0 + j, e); });
  });
}

struct noise_kernel {
  float* out;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    const bool vec = aligned(out, 16);
    for_each_counter<DG_DROPGRAD_MODES>(t, n, vec, rng, q0, [&](const dg::Stream& st, auto m, int64_t q,
                                                                 const auto& e) {
      float z[4];
      noise_or_ones<m.value>(st, q, z);
      e.store(out, z);
    });
  }
};

template <typename T>
struct drop_grad_kernel {
  const T* grad;
  T* out;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    using A = typename Acc<T>::type;
    const bool vec = aligned(grad, 4 * sizeof(T)) && aligned(out, 4 * sizeof(T));
    for_each_counter<DG_DROPGRAD_MODES>(t, n, vec, rng, q0, [&](const dg::Stream& st, auto m, int64_t q,
                                                                 const auto& e) {
      float z[4];
      T g[4], o[4];
      noise_or_ones<m.value>(st, q, z);
      e.load(grad, g);
      for (int k = 0; k < 4; ++k) o[k] = from_acc<T, A>(to_acc(g[k]) * static_cast<A>(z[k]));
      e.store(out, o);
    });
  }
};

// param - lr * ((grad + weight_decay * param) * n) for the counters c0, c0 + step, ... below c1 of
// one tensor (weight decay only in the optimizer's in-place step). out may be param: each thread
// reads its four elements before it writes them.
template <typename T>
DG_HD void update_counters(const T* param, const T* grad, const LearningRate& lr, typename Acc<T>::type wd, T* out,
                           int64_t n, const dg::Stream& st, int64_t q0, int64_t c0, int64_t c1, int64_t step) {
  using A = typename Acc<T>::type;
  const T* lr_vec = static_cast<const T*>(lr.lr_vec);
  const A lr_s = lr.lr_ptr ? *static_cast<const A*>(lr.lr_ptr) : static_cast<A>(lr.lr_value);
  const size_t b = 4 * sizeof(T);
  const bool vec = aligned(param, b) && aligned(grad, b) && aligned(out, b) && (!lr_vec || aligned(lr_vec, b));
  with_mode<DG_DROPGRAD_MODES>(st, [&](auto m) {
    for_counters(n, vec, c0, c1, step, [&](int64_t j, const auto& e) {
      float z[4];
      T w[4], g[4], l[4], o[4];
      noise_or_ones<m.value>(st, q0 + j, z);
      e.load(param, w);
      e.load(grad, g);
      if (lr_vec) e.load(lr_vec, l);
      for (int k = 0; k < 4; ++k) {
        const A d = wd != A(0) ? to_acc(g[k]) + wd * to_acc(w[k]) : to_acc(g[k]);
        const A gn = m.value == dg::kNone ? d : d * static_cast<A>(z[k]);
        o[k] = from_acc<T, A>(to_acc(w[k]) - (lr_vec ? to_acc(l[k]) : lr_s) * gn);
      }
      e.store(out, o);
    });
  });
}

template <typename T>
struct dropgrad_update_kernel {
  const T* param;
  const T* grad;
  LearningRate lr;
  T* out;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    int64_t q = q0;
    const dg::Stream st = resolve(rng, q);
    update_counters(param, grad, lr, typename Acc<T>::type(0), out, n, st, q, first(t), counters(n), stride(t));
  }
};

// Multi-tensor apply in the way of apex: up to kListSize tensors and kMaxBlocks chunks of
// kChunk counters travel in the kernel's argument block; each CUDA block runs one chunk.
struct StepList {
  StepTensor t[kListSize];
  int16_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

template <typename T>
struct dropgrad_step_kernel {
  StepList list;
  Rng rng;
  typename Acc<T>::type weight_decay;
  DG_HD void operator()(const Idx& t) const {
    const StepTensor& s = list.t[list.block_tensor[t.block]];
    int64_t q = s.q0;
    const dg::Stream st = resolve(rng, q);
    const int64_t c0 = static_cast<int64_t>(list.block_chunk[t.block]) * kChunk;
    const int64_t c1 = c0 + kChunk < counters(s.numel) ? c0 + kChunk : counters(s.numel);
    update_counters(static_cast<const T*>(s.param), static_cast<const T*>(s.grad), s.lr, weight_decay,
                    static_cast<T*>(s.out), s.numel, st, q, c0 + t.thread, c1, t.threads);
  }
};

// softplus's argument a + eps of counter q's four elements (eps = 0 when deterministic; the noise is
// regenerated in backward, never saved).
template <int M, typename T, typename A>
DG_HD void meta_z(const dg::Stream& st, uint64_t q, const T a[4], A z[4]) {
  if constexpr (M == dg::kNone) {
    for (int k = 0; k < 4; ++k) z[k] = to_acc(a[k]);
  } else {
    float eps[4];
    dg::noise4<M>(st.np, q, st.keys, eps);
    for (int k = 0; k < 4; ++k) z[k] = to_acc(a[k]) + static_cast<A>(eps[k]);
  }
}

template <typename T>
struct meta_dropout_kernel {
  const T* f;
  const T* a;
  T* out;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    using A = typename Acc<T>::type;
    const size_t b = 4 * sizeof(T);
    const bool vec = aligned(f, b) && aligned(a, b) && aligned(out, b);
    for_each_counter<DG_META_MODES>(t, n, vec, rng, q0, [&](const dg::Stream& st, auto m, int64_t q, const auto& e) {
      T fv[4], av[4], o[4];
      A z[4];
      e.load(f, fv);
      e.load(a, av);
      meta_z<m.value>(st, q, av, z);
      for (int k = 0; k < 4; ++k) o[k] = from_acc<T, A>(to_acc(fv[k]) * dg::softplus(z[k]));
      e.store(out, o);
    });
  }
};

template <typename T>
struct meta_dropout_backward_kernel {
  const T* gout;
  const T* f;
  const T* a;
  T* gf;
  T* ga;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    using A = typename Acc<T>::type;
    const size_t b = 4 * sizeof(T);
    const bool vec = aligned(gout, b) && aligned(f, b) && aligned(a, b) && aligned(gf, b) && aligned(ga, b);
    for_each_counter<DG_META_MODES>(t, n, vec, rng, q0, [&](const dg::Stream& st, auto m, int64_t q, const auto& e) {
      T gv[4], fv[4], av[4], o1[4], o2[4];
      A z[4];
      e.load(gout, gv);
      e.load(f, fv);
      e.load(a, av);
      meta_z<m.value>(st, q, av, z);
      for (int k = 0; k < 4; ++k) {
        o1[k] = from_acc<T, A>(to_acc(gv[k]) * dg::softplus(z[k]));
        o2[k] = from_acc<T, A>((to_acc(gv[k]) * to_acc(fv[k])) * dg::softplus_grad(z[k]));
      }
      e.store(gf, o1);
      e.store(ga, o2);
    });
  }
};

template <typename T>
struct meta_dropout_double_backward_kernel {
  const T* ggf;
  const T* gga;
  const T* gout;
  const T* f;
  const T* a;
  T* d_gout;
  T* d_f;
  T* d_a;
  int64_t n;
  Rng rng;
  int64_t q0;
  DG_HD void operator()(const Idx& t) const {
    using A = typename Acc<T>::type;
    const size_t b = 4 * sizeof(T);
    const bool vec = aligned(ggf, b) && aligned(gga, b) && aligned(gout, b) && aligned(f, b) && aligned(a, b) &&
                     aligned(d_gout, b) && aligned(d_f, b) && aligned(d_a, b);
    for_each_counter<DG_META_MODES>(t, n, vec, rng, q0, [&](const dg::Stream& st, auto m, int64_t q, const auto& e) {
      T v0[4], v1[4], v2[4], fv[4], av[4], o0[4], o1[4], o2[4];
      A z[4];
      e.load(ggf, v0);
      e.load(gga, v1);
      e.load(gout, v2);
      e.load(f, fv);
      e.load(a, av);
      meta_z<m.value>(st, q, av, z);
      for (int k = 0; k < 4; ++k) {
        A r0, r1, r2;
        dg::meta_dropout_double_backward(to_acc(v0[k]), to_acc(v1[k]), to_acc(v2[k]), to_acc(fv[k]),
                                         dg::softplus(z[k]), dg::softplus_grad(z[k]), dg::softplus_grad2(z[k]), &r0,
                                         &r1, &r2);
        o0[k] = from_acc<T, A>(r0);
        o1[k] = from_acc<T, A>(r1);
        o2[k] = from_acc<T, A>(r2);
      }
      e.store(d_gout, o0);
      e.store(d_f, o1);
      e.store(d_a, o2);
    });
  }
};

struct philox4x32_10_kernel {
  const int64_t* counter;
  const int64_t* key;
  int64_t* out;
  int64_t n;
  DG_HD void operator()(const Idx& t) const {
    for (int64_t i = first(t); i < n; i += stride(t)) {
      uint32_t c[4];
      for (int k = 0; k < 4; ++k) c[k] = static_cast<uint32_t>(counter[4 * i + k]);
      dg::philox4x32_10(c, static_cast<uint32_t>(key[2 * i]), static_cast<uint32_t>(key[2 * i + 1]));
      for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<int64_t>(c[k]);
    }
  }
};

// Blocks for `items` grid-stride work items: one item a thread, at most the launcher's cap (the
// grid-stride loops cover the rest).
inline int64_t blocks_for(int64_t items, int64_t max_blocks) {
  const int64_t b = (items + kThreads - 1) / kThreads;
  return b < max_blocks ? (b > 0 ? b : 1) : max_blocks;
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

}  // namespace kernels

// ---------------------------------------------------------------- launch plans
template <class L>
void noise(const L& launch, float* out, int64_t n, const Rng& rng, int64_t q0) {
  if (n == 0) return;
  launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks), kernels::noise_kernel{out, n, rng, q0});
}

template <class L>
void drop_grad(const L& launch, DType dt, const void* grad, void* out, int64_t n, const Rng& rng, int64_t q0) {
  if (n == 0) return;
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks),
           kernels::drop_grad_kernel<T>{static_cast<const T*>(grad), static_cast<T*>(out), n, rng, q0});
  });
}

template <class L>
void dropgrad_update(const L& launch, DType dt, const void* param, const void* grad, const LearningRate& lr, void* out,
                     int64_t n, const Rng& rng, int64_t q0) {
  if (n == 0) return;
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks),
           kernels::dropgrad_update_kernel<T>{static_cast<const T*>(param), static_cast<const T*>(grad), lr,
                                              static_cast<T*>(out), n, rng, q0});
  });
}

// Fills lists of at most kListSize tensors and kMaxBlocks chunks and launches each when full; a
// tensor whose chunks outgrow a list continues in the next one.
template <class L>
void dropgrad_step(const L& launch, DType dt, const StepTensor* tensors, int count, const Rng& rng, double weight_decay) {
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    kernels::dropgrad_step_kernel<T> k{};
    k.rng = rng;
    k.weight_decay = static_cast<typename kernels::Acc<T>::type>(weight_decay);
    int nt = 0, nb = 0;
    auto flush = [&] {
      if (nb > 0) launch(nb, k);
      nt = nb = 0;
    };
    for (int i = 0; i < count; ++i) {
      const int64_t chunks = (kernels::counters(tensors[i].numel) + kChunk - 1) / kChunk;
      bool in_list = false;
      for (int64_t c = 0; c < chunks; ++c) {
        if (!in_list) {  // (re)enter tensor i: at its first chunk, or after a flush mid-tensor
          if (nt == kListSize) flush();
          k.list.t[nt++] = tensors[i];
          in_list = true;
        }
        k.list.block_tensor[nb] = static_cast<int16_t>(nt - 1);
        k.list.block_chunk[nb] = static_cast<int32_t>(c);
        if (++nb == kMaxBlocks) {
          flush();
          in_list = false;
        }
      }
    }
    flush();
  });
}

template <class L>
void meta_dropout(const L& launch, DType dt, const void* f, const void* a, void* out, int64_t n, const Rng& rng,
                  int64_t q0) {
  if (n == 0) return;
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks),
           kernels::meta_dropout_kernel<T>{static_cast<const T*>(f), static_cast<const T*>(a), static_cast<T*>(out), n,
                                           rng, q0});
  });
}

template <class L>
void meta_dropout_backward(const L& launch, DType dt, const void* grad_out, const void* f, const void* a, void* gf,
                           void* ga, int64_t n, const Rng& rng, int64_t q0) {
  if (n == 0) return;
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks),
           kernels::meta_dropout_backward_kernel<T>{static_cast<const T*>(grad_out), static_cast<const T*>(f),
                                                    static_cast<const T*>(a), static_cast<T*>(gf), static_cast<T*>(ga),
                                                    n, rng, q0});
  });
}

// in: grad_grad_f, grad_grad_a, grad_out, f, a; out: d grad_out, d f, d a.
template <class L>
void meta_dropout_double_backward(const L& launch, DType dt, const void* const in[5], void* const out[3], int64_t n,
                                  const Rng& rng, int64_t q0) {
  if (n == 0) return;
  kernels::dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    auto c = [&](int i) { return static_cast<const T*>(in[i]); };
    auto o = [&](int i) { return static_cast<T*>(out[i]); };
    launch(kernels::blocks_for(kernels::counters(n), launch.max_blocks),
           kernels::meta_dropout_double_backward_kernel<T>{c(0), c(1), c(2), c(3), c(4), o(0), o(1), o(2), n, rng, q0});
  });
}

template <class L>
void philox4x32_10(const L& launch, const int64_t* counter, const int64_t* key, int64_t* out, int64_t n) {
  if (n == 0) return;
  launch(kernels::blocks_for(n, launch.max_blocks), kernels::philox4x32_10_kernel{counter, key, out, n});
}

}  // namespace dg_cuda

// The GPU's launch plans: instantiated once, where nvcc compiles them (dropgrad_cuda.cu), and only
// declared to the host code that calls them (dropgrad_cuda_ops.cpp, g++), which so compiles no
// device launch. The emulator's, over HostLaunch, instantiate where they are used. Used inside
// namespace dg_cuda.
#define DG_DEVICE_LAUNCH_PLANS(INSTANTIATION)                                                                       \
  using D = DeviceLaunch;                                                                                           \
  INSTANTIATION void noise<D>(const D&, float*, int64_t, const Rng&, int64_t);                                      \
  INSTANTIATION void drop_grad<D>(const D&, DType, const void*, void*, int64_t, const Rng&, int64_t);               \
  INSTANTIATION void dropgrad_update<D>(const D&, DType, const void*, const void*, const LearningRate&, void*,       \
                                        int64_t, const Rng&, int64_t);                                              \
  INSTANTIATION void dropgrad_step<D>(const D&, DType, const StepTensor*, int, const Rng&, double);                 \
  INSTANTIATION void meta_dropout<D>(const D&, DType, const void*, const void*, void*, int64_t, const Rng&,          \
                                     int64_t);                                                                      \
  INSTANTIATION void meta_dropout_backward<D>(const D&, DType, const void*, const void*, const void*, void*, void*, \
                                              int64_t, const Rng&, int64_t);                                        \
  INSTANTIATION void meta_dropout_double_backward<D>(const D&, DType, const void* const[5], void* const[3],         \
                                                     int64_t, const Rng&, int64_t);                                 \
  INSTANTIATION void philox4x32_10<D>(const D&, const int64_t*, const int64_t*, int64_t*, int64_t);

#if !defined(__CUDACC__) && !defined(DG_EMULATOR)
namespace dg_cuda {
DG_DEVICE_LAUNCH_PLANS(extern template)
}  // namespace dg_cuda
#endif
