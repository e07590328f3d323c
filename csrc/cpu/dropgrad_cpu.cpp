// CPU kernels of the dropgrad:: ops. The noise of a stream is produced in blocks of kBlock
// elements into a stack buffer (so it never touches memory) and consumed by the element loop.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../dropgrad_math.h"
#include "../ops.h"

namespace {

constexpr int64_t kBlock = 512;  // elements per noise buffer: 128 Philox calls, 2 KiB of floats
constexpr int64_t kGrainBlocks = 16;

using dg::make_stream;
using dg::Stream;
using OptTensor = c10::optional<at::Tensor>;

// DROPGRAD_THP=1 advises outputs of 4 MiB or more for transparent huge pages before the kernel
// first touches them (as PyTorch's THP_MEM_ALLOC_ENABLE=1 does for every allocation): a fresh
// 44 MB tensor otherwise takes ~11K page faults, more time than the kernel's arithmetic (here 42
// -> 23 ms steady for the 11M Gaussian update). Opt-in, like PyTorch's: on VMs that hand freed
// memory back to the host, huge pages fault in cold and calls were up to 5x slower in bursts.
// Only the 2 MiB-aligned interior is advised; the advice is a hint, so failure is harmless.
// The output is in `first`'s layout (dg::empty_in_layout).
at::Tensor empty_output(const at::Tensor& first, const at::TensorOptions& options, bool contiguous = false) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  static const bool on = [] {
    const char* v = std::getenv("DROPGRAD_THP");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  at::Tensor t = dg::empty_in_layout(first, options, contiguous);
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), e = (p + t.nbytes()) & ~(kHuge - 1);
  if (on && t.nbytes() >= 2 * kHuge && e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  return t;
}

at::Tensor empty_output(const at::Tensor& first) { return empty_output(first, first.options()); }

// The (seed, offset) a kernel uses: with rng_state (see csrc/ops.cpp) its seed, and its offset
// added to the argument's.
void resolve_seed(const OptTensor& rng_state, int64_t& seed, int64_t& offset) {
  if (!rng_state.has_value() || !rng_state->defined()) return;
  TORCH_CHECK(rng_state->scalar_type() == at::kLong && rng_state->numel() == 2 && rng_state->device().is_cpu(),
              "rng_state must be a CPU int64 tensor [seed, offset]");
  const at::Tensor s = rng_state->contiguous();
  TORCH_CHECK(s.data_ptr<int64_t>()[1] >= 0 && s.data_ptr<int64_t>()[1] % 4 == 0,
              "rng_state's offset must be a non-negative multiple of 4");
  seed = s.data_ptr<int64_t>()[0];
  offset += s.data_ptr<int64_t>()[1];
}

// The words of `count` (<= kBlock / 4) consecutive Philox counters from q0, word-major:
// w[i][j] is word i of counter q0 + j. The AVX2 version runs eight counters per instruction
// (GCC's own vectorization of the 32x32->64 multiplies is several times slower); the tests hold
// both to the reference bit for bit.
__attribute__((target("default")))
void philox_block(uint64_t q0, int64_t count, uint32_t k0, uint32_t k1, uint32_t (*w)[kBlock / 4]) {
  for (int64_t j = 0; j < count; ++j) {
    uint32_t c[4];
    dg::words4(q0 + j, k0, k1, c);
    for (int i = 0; i < 4; ++i) w[i][j] = c[i];
  }
}

// (hi, lo) of eight 32x32-bit products with a constant m (the same in every lane): mul_epu32
// multiplies the even 32-bit lanes, so the odd ones are shifted down first.
__attribute__((target("avx2"), always_inline)) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2")))
void philox_block(uint64_t q0, int64_t count, uint32_t k0, uint32_t k1, uint32_t (*w)[kBlock / 4]) {
  const __m256i ma = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mb = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  constexpr int kChains = 4;  // independent groups of eight in flight, to hide the multiply latency (4: -20%)
  for (int64_t j = 0; j < count; j += 8 * kChains) {
    alignas(32) uint32_t lo[8 * kChains], hi[8 * kChains];
    for (int l = 0; l < 8 * kChains; ++l) {
      const uint64_t q = q0 + static_cast<uint64_t>(j + l);
      lo[l] = static_cast<uint32_t>(q);
      hi[l] = static_cast<uint32_t>(q >> 32);
    }
    __m256i c0[kChains], c1[kChains], c2[kChains], c3[kChains];  // c2, c3 set by round 1
    for (int h = 0; h < kChains; ++h) {
      c0[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + 8 * h));
      c1[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + 8 * h));
    }
    // Round 1 peeled: the contract's counter words 2 and 3 are 0, so one of its products is 0.
    const __m256i ka0 = _mm256_set1_epi32(static_cast<int>(k0)), kb0 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int h = 0; h < kChains; ++h) {
      __m256i ha, la;
      mulhilo8(c0[h], ma, ha, la);
      c0[h] = _mm256_xor_si256(c1[h], ka0);
      c2[h] = _mm256_xor_si256(ha, kb0);
      c1[h] = _mm256_setzero_si256();
      c3[h] = la;
    }
    uint32_t a = k0 + 0x9E3779B9u, b = k1 + 0xBB67AE85u;
    for (int r = 1; r < 10; ++r) {
      const __m256i ka = _mm256_set1_epi32(static_cast<int>(a)), kb = _mm256_set1_epi32(static_cast<int>(b));
      for (int h = 0; h < kChains; ++h) {
        __m256i hb, lb, ha, la;
        mulhilo8(c2[h], mb, hb, lb);
        mulhilo8(c0[h], ma, ha, la);
        c0[h] = _mm256_xor_si256(_mm256_xor_si256(hb, c1[h]), ka);
        c2[h] = _mm256_xor_si256(_mm256_xor_si256(ha, c3[h]), kb);
        c1[h] = lb;
        c3[h] = la;
      }
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    // w has room for whole groups: kBlock / 4 is a multiple of 8 * kChains.
    for (int h = 0; h < kChains; ++h) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[0] + j + 8 * h), c0[h]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[1] + j + 8 * h), c1[h]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[2] + j + 8 * h), c2[h]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[3] + j + 8 * h), c3[h]);
    }
  }
}

// Noise of `count` consecutive Philox counters starting at q0, computed word-major (z[i][j] for
// word i of counter j) so every loop is a plain vertical loop that vectorizes, then interleaved
// into element order. Cloned for AVX2 where the CPU allows.
__attribute__((target_clones("avx2", "default")))
void noise_block(const dg::NoiseParams& np, uint64_t q0, int64_t count, uint32_t k0, uint32_t k1,
                 float* __restrict out) {
  alignas(32) uint32_t w[4][kBlock / 4];
  alignas(32) float z[4][kBlock / 4];
  philox_block(q0, count, k0, k1, w);
  const float p = np.p, scale = np.scale, sigma = np.sigma;
  if (np.mode == dg::kBernoulli) {
    for (int i = 0; i < 4; ++i) {
      for (int64_t j = 0; j < count; ++j) z[i][j] = dg::bernoulli(p, scale, w[i][j]);
    }
  } else {
    // Box-Muller in three passes (radius, angle, rotation): in one loop the log and sin/cos
    // polynomials outgrow AVX2's registers.
    for (int i = 0; i < 4; i += 2) {
      for (int64_t j = 0; j < count; ++j) z[i][j] = dg::box_muller_radius(w[i][j]);
      for (int64_t j = 0; j < count; ++j) z[i + 1][j] = dg::box_muller_angle(w[i + 1][j]);
      for (int64_t j = 0; j < count; ++j) {
        float s, c;
        dg::sincos_f(z[i + 1][j], &s, &c);
        const float r = z[i][j];
        z[i][j] = r * c;
        z[i + 1][j] = r * s;
      }
    }
    if (np.mode == dg::kGaussian) {
      for (int i = 0; i < 4; ++i) {
        for (int64_t j = 0; j < count; ++j) z[i][j] = dg::gaussian(sigma, z[i][j]);
      }
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    for (int i = 0; i < 4; ++i) out[4 * j + i] = z[i][j];
  }
}

// The noise of n (<= kBlock) elements from stream position `pos` (a multiple of 4) in buf, or
// nullptr in mode none.
const float* block_noise(const Stream& st, int64_t pos, int64_t n, float* buf) {
  if (st.np.mode == dg::kNone) return nullptr;
  noise_block(st.np, static_cast<uint64_t>(pos) / 4, (n + 3) / 4, st.k0, st.k1, buf);
  return buf;
}

// Calls body(begin, n, noise) over [0, numel) in kBlock pieces, in parallel. `offset` is the
// stream position of element 0.
template <typename Body>
void for_each_block(int64_t numel, int64_t offset, const Stream& st, const Body& body) {
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t n = std::min(kBlock, numel - begin);
      body(begin, n, block_noise(st, offset + begin, n, buf));
    }
  });
}

// The element loops, one instantiation per dtype, cloned for AVX2. A nullable pointer (noise,
// lr_vec, eps) is tested once per call, never per element, so each loop body vectorizes.

// param - lr * (grad * n) in the op-math type; lr_vec (param's dtype) overrides lr when given.
template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void update_range(const scalar_t* param, const scalar_t* grad, const scalar_t* lr_vec, double lr,
                  scalar_t* __restrict out, int64_t n, const float* noise) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t l = static_cast<acc_t>(lr);
  auto x = [](auto v) { return static_cast<acc_t>(v); };
  if (noise && lr_vec) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(x(param[i]) - x(lr_vec[i]) * (x(grad[i]) * x(noise[i])));
  } else if (noise) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(x(param[i]) - l * (x(grad[i]) * x(noise[i])));
  } else if (lr_vec) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(x(param[i]) - x(lr_vec[i]) * x(grad[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(x(param[i]) - l * x(grad[i]));
  }
}

// The in-place step of an optimizer: w -= lr * ((grad + weight_decay * w) * n), in two passes over
// the block through d (n <= kBlock): w is read and written through one pointer, which the loops
// of update_range (out __restrict) must not be given.
template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void step_range_(scalar_t* w, const scalar_t* grad, const scalar_t* lr_vec, double lr, double weight_decay, int64_t n,
                 const float* noise) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t l = static_cast<acc_t>(lr), wd = static_cast<acc_t>(weight_decay);
  auto x = [](auto v) { return static_cast<acc_t>(v); };
  alignas(64) acc_t d[kBlock];
  if (wd != acc_t(0)) {
    for (int64_t i = 0; i < n; ++i) d[i] = x(grad[i]) + wd * x(w[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = x(grad[i]);
  }
  if (noise) {
    for (int64_t i = 0; i < n; ++i) d[i] = d[i] * x(noise[i]);
  }
  if (lr_vec) {
    for (int64_t i = 0; i < n; ++i) w[i] = static_cast<scalar_t>(x(w[i]) - x(lr_vec[i]) * d[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) w[i] = static_cast<scalar_t>(x(w[i]) - l * d[i]);
  }
}

template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void drop_grad_range(const scalar_t* grad, scalar_t* __restrict out, int64_t n, const float* noise) {
  using acc_t = at::opmath_type<scalar_t>;
  if (noise) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * static_cast<acc_t>(noise[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = grad[i];
  }
}

// z = a + eps (a when eps is nullptr) and, for float math, e = exp(-|z|) for softplus, each a
// pass of its own over the block (n <= kBlock): see softplus_exp in dropgrad_math.h.
template <typename scalar_t, typename acc_t>
__attribute__((always_inline)) inline void softplus_passes(const scalar_t* a, const float* eps, int64_t n, acc_t* z,
                                                           acc_t* e) {
  if (eps) {
    for (int64_t i = 0; i < n; ++i) z[i] = static_cast<acc_t>(a[i]) + static_cast<acc_t>(eps[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) z[i] = static_cast<acc_t>(a[i]);
  }
  if constexpr (std::is_same<acc_t, float>::value) {
    for (int64_t i = 0; i < n; ++i) e[i] = dg::softplus_exp(z[i]);
  }
}

// softplus(z), or its Order-th derivative (1 or 2), from *e = exp(-|z|) in float math; double math
// calls the plain functions and never reads *e (softplus_passes leaves it unset).
template <int Order, typename acc_t>
__attribute__((always_inline)) inline acc_t softplus_of(acc_t z, const acc_t* e) {
  if constexpr (std::is_same<acc_t, float>::value) {
    return Order == 2 ? dg::softplus_grad2_from_exp(z, *e)
                      : (Order == 1 ? dg::softplus_grad_from_exp(z, *e) : dg::softplus_from_exp(z, *e));
  } else {
    return Order == 2 ? dg::softplus_grad2(z) : (Order == 1 ? dg::softplus_grad(z) : dg::softplus(z));
  }
}

// f * softplus(a + eps); eps nullptr when deterministic.
template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void meta_dropout_range(const scalar_t* f, const scalar_t* a, scalar_t* __restrict out, int64_t n, const float* eps) {
  using acc_t = at::opmath_type<scalar_t>;
  alignas(32) acc_t z[kBlock], e[kBlock];
  softplus_passes(a, eps, n, z, e);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(f[i]) * softplus_of<0>(z[i], e + i));
}

// (grad_out * softplus(z), grad_out * f * softplus'(z)), z = a + eps.
template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void meta_dropout_backward_range(const scalar_t* gout, const scalar_t* f, const scalar_t* a, scalar_t* __restrict gf,
                                 scalar_t* __restrict ga, int64_t n, const float* eps) {
  using acc_t = at::opmath_type<scalar_t>;
  auto x = [](auto v) { return static_cast<acc_t>(v); };
  alignas(32) acc_t z[kBlock], e[kBlock];
  softplus_passes(a, eps, n, z, e);
  for (int64_t i = 0; i < n; ++i) gf[i] = static_cast<scalar_t>(x(gout[i]) * softplus_of<0>(z[i], e + i));
  for (int64_t i = 0; i < n; ++i) ga[i] = static_cast<scalar_t>((x(gout[i]) * x(f[i])) * softplus_of<1>(z[i], e + i));
}

// meta_dropout's double backward (dg::meta_dropout_double_backward) over a block: softplus and its
// two derivatives each a pass into a buffer, then the combination.
template <typename scalar_t>
__attribute__((target_clones("avx2", "default")))
void meta_dropout_double_backward_range(const scalar_t* ggf, const scalar_t* gga, const scalar_t* gout,
                                        const scalar_t* f, const scalar_t* a, scalar_t* __restrict d_gout,
                                        scalar_t* __restrict d_f, scalar_t* __restrict d_a, int64_t n,
                                        const float* eps) {
  using acc_t = at::opmath_type<scalar_t>;
  auto x = [](auto v) { return static_cast<acc_t>(v); };
  alignas(32) acc_t z[kBlock], e[kBlock], sp[kBlock], s[kBlock], ds[kBlock];
  softplus_passes(a, eps, n, z, e);
  for (int64_t i = 0; i < n; ++i) sp[i] = softplus_of<0>(z[i], e + i);
  for (int64_t i = 0; i < n; ++i) s[i] = softplus_of<1>(z[i], e + i);
  for (int64_t i = 0; i < n; ++i) ds[i] = softplus_of<2>(z[i], e + i);
  for (int64_t i = 0; i < n; ++i) {
    acc_t o0, o1, o2;
    dg::meta_dropout_double_backward(x(ggf[i]), x(gga[i]), x(gout[i]), x(f[i]), sp[i], s[i], ds[i], &o0, &o1, &o2);
    d_gout[i] = static_cast<scalar_t>(o0);
    d_f[i] = static_cast<scalar_t>(o1);
    d_a[i] = static_cast<scalar_t>(o2);
  }
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor");
}

// One-element lr tensors are read as a scalar; full-shape ones an array in the output's layout,
// read at `row` elements further for each list of a batch (0: one lr shared by the lists).
struct LearningRate {
  double scalar;
  at::Tensor vec;
  int64_t row = 0;
};

LearningRate resolve_lr(const OptTensor& lr_tensor, double lr, const at::Tensor& param, const at::Tensor& out,
                        int64_t batch = 0) {
  if (!lr_tensor.has_value() || !lr_tensor->defined()) return {lr, at::Tensor()};
  if (lr_tensor->numel() == 1) return {lr_tensor->item<double>(), at::Tensor()};
  const bool shared = batch > 0 && lr_tensor->sizes() == param.sizes().slice(1);
  TORCH_CHECK(shared || lr_tensor->sizes() == param.sizes(),
              batch > 0 ? "lr must be a scalar, have param's shape or param.shape[1:]" : "lr must be a scalar or have param's shape");
  TORCH_CHECK(lr_tensor->scalar_type() == param.scalar_type(), "a full-shape lr must have param's dtype");
  return {0.0, shared ? lr_tensor->contiguous() : dg::in_layout(*lr_tensor, out),
          shared ? 0 : param.numel() / std::max<int64_t>(batch, 1)};
}

at::Tensor philox4x32_10_cpu(const at::Tensor& counter, const at::Tensor& key) {
  TORCH_CHECK(counter.scalar_type() == at::kLong && key.scalar_type() == at::kLong,
              "counter and key must be int64 tensors");
  TORCH_CHECK(counter.dim() >= 1 && counter.size(-1) == 4, "counter must have shape (..., 4)");
  TORCH_CHECK(key.dim() >= 1 && key.size(-1) == 2, "key must have shape (..., 2)");
  TORCH_CHECK(key.numel() / 2 == counter.numel() / 4, "key must hold one (k0, k1) pair per counter");
  const at::Tensor c = counter.contiguous();
  const at::Tensor k = key.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, c.numel() / 4, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t w[4];
      for (int j = 0; j < 4; ++j) w[j] = static_cast<uint32_t>(cp[4 * i + j]);
      dg::philox4x32_10(w, static_cast<uint32_t>(kp[2 * i]), static_cast<uint32_t>(kp[2 * i + 1]));
      for (int j = 0; j < 4; ++j) op[4 * i + j] = static_cast<int64_t>(w[j]);
    }
  });
  return out;
}

at::Tensor noise_cpu(const at::Tensor& like, double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  at::Tensor out = empty_output(like, like.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const Stream st = make_stream(p, mode, seed);
  if (st.np.mode == dg::kNone) return out.fill_(1.0f);
  for_each_block(out.numel(), offset, st, [&](int64_t begin, int64_t n, const float* nz) {
    std::copy(nz, nz + n, o + begin);
  });
  return out;
}

at::Tensor drop_grad_cpu(const at::Tensor& grad, double p, int64_t mode, int64_t seed, int64_t offset,
                         const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  check_floating(grad, "grad");
  at::Tensor out = empty_output(grad);
  const at::Tensor g = dg::in_layout(grad, out);
  const Stream st = make_stream(p, mode, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "drop_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(g.numel(), offset, st, [&](int64_t b, int64_t n, const float* nz) {
      drop_grad_range(gp + b, op + b, n, nz);
    });
  });
  return out;
}

at::Tensor dropgrad_update_cpu(const at::Tensor& param, const at::Tensor& grad,
                               const OptTensor& lr_tensor, double lr, double p,
                               int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  check_floating(param, "param");
  check_floating(grad, "grad");
  TORCH_CHECK(param.sizes() == grad.sizes() && param.scalar_type() == grad.scalar_type(),
              "param and grad must have the same shape and dtype");
  at::Tensor out = empty_output(param);
  const at::Tensor pc = dg::in_layout(param, out), gc = dg::in_layout(grad, out);
  const LearningRate l = resolve_lr(lr_tensor, lr, param, out);
  const Stream st = make_stream(p, mode, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(), "dropgrad_update", [&] {
    const scalar_t* pp = pc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* lp = l.vec.defined() ? l.vec.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(pc.numel(), offset, st, [&](int64_t b, int64_t n, const float* nz) {
      update_range(pp + b, gp + b, lp ? lp + b : nullptr, l.scalar, op + b, n, nz);
    });
  });
  return out;
}

// One tensor of a step (in a batch, one list's row of it), its dtype resolved before the parallel
// region: AT_DISPATCH inside the per-block loop cost more than the noise on small lists (Conv-4)
// and kept them from scaling.
// In place (dropgrad_step_), out is the param itself.
struct StepItem {
  const void* param;
  const void* grad;
  const void* lr_vec;
  double lr;
  void* out;
  int64_t numel;
  int64_t offset;
  void (*run)(const StepItem&, double weight_decay, int64_t begin, int64_t n, const float* noise);
};

template <typename scalar_t>
void run_update(const StepItem& t, double, int64_t begin, int64_t n, const float* noise) {
  const scalar_t* lr_vec = t.lr_vec ? static_cast<const scalar_t*>(t.lr_vec) + begin : nullptr;
  update_range(static_cast<const scalar_t*>(t.param) + begin, static_cast<const scalar_t*>(t.grad) + begin, lr_vec, t.lr,
               static_cast<scalar_t*>(t.out) + begin, n, noise);
}

template <typename scalar_t>
void run_step_(const StepItem& t, double weight_decay, int64_t begin, int64_t n, const float* noise) {
  const scalar_t* lr_vec = t.lr_vec ? static_cast<const scalar_t*>(t.lr_vec) + begin : nullptr;
  step_range_(static_cast<scalar_t*>(t.out) + begin, static_cast<const scalar_t*>(t.grad) + begin, lr_vec, t.lr,
              weight_decay, n, noise);
}

// The whole list in one parallel region: blocks of all tensors are numbered consecutively and
// each worker finds its tensor by binary search. Tensor k's stream starts where tensor k-1's
// ends, rounded up to a multiple of 4; with batch > 0 each tensor is `batch` rows, one per list,
// and list b's stream starts b list spans after list 0's. outs: new tensors, or (in place) the
// params, one that is not dense through a contiguous copy written back at the end.
void step_cpu(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, double weight_decay,
              double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state, int64_t batch,
              bool in_place, std::vector<at::Tensor>& outs) {
  resolve_seed(rng_state, seed, offset);
  const size_t nt = params.size();
  TORCH_CHECK(grads.size() == nt, "params and grads must have the same length");
  TORCH_CHECK(lrs.empty() || lrs.size() == nt, "lrs must be empty or have one entry per param");
  const int64_t list_span = dg::batch_list_span(params, batch), rows = std::max<int64_t>(batch, 1);
  std::vector<at::Tensor> keep;  // contiguous copies and lr arrays, alive until the end
  std::vector<StepItem> items(nt * rows);
  std::vector<int64_t> first_block(nt * rows + 1, 0);
  outs.resize(nt);
  int64_t start = offset;
  for (size_t k = 0; k < nt; ++k) {
    check_floating(params[k], "params");
    check_floating(grads[k], "grads");
    TORCH_CHECK(params[k].sizes() == grads[k].sizes() && params[k].scalar_type() == grads[k].scalar_type(),
                "params[", k, "] and grads[", k, "] must have the same shape and dtype");
    // In place, a dense param is written where it lies; another through a contiguous copy.
    outs[k] = !in_place ? empty_output(params[k], params[k].options(), batch > 0)
              : params[k].is_non_overlapping_and_dense() ? params[k] : params[k].contiguous();
    const at::Tensor w = in_place ? outs[k] : dg::in_layout(params[k], outs[k]), g = dg::in_layout(grads[k], outs[k]);
    const LearningRate l = resolve_lr(lrs.empty() ? OptTensor() : OptTensor(lrs[k]), lr, params[k], outs[k], batch);
    decltype(StepItem::run) run = nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dropgrad_step",
                                    [&] { run = in_place ? &run_step_<scalar_t> : &run_update<scalar_t>; });
    const int64_t row = w.numel() / rows, bytes = row * w.element_size(), lr_bytes = l.row * w.element_size();
    for (int64_t b = 0; b < rows; ++b) {
      const size_t i = k * rows + b;
      items[i] = {static_cast<const char*>(w.data_ptr()) + b * bytes, static_cast<const char*>(g.data_ptr()) + b * bytes,
                  l.vec.defined() ? static_cast<const char*>(l.vec.data_ptr()) + b * lr_bytes : nullptr, l.scalar,
                  static_cast<char*>(outs[k].data_ptr()) + b * bytes, row, start + b * list_span, run};
      first_block[i + 1] = first_block[i] + (row + kBlock - 1) / kBlock;
    }
    keep.insert(keep.end(), {w, g, l.vec});
    start += dg::span(row);
  }
  const Stream st = make_stream(p, mode, seed);
  const size_t ni = items.size();
  at::parallel_for(0, first_block[ni], kGrainBlocks, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const size_t k = std::upper_bound(first_block.begin(), first_block.end(), b) - first_block.begin() - 1;
      const StepItem& it = items[k];
      const int64_t begin = (b - first_block[k]) * kBlock;
      const int64_t n = std::min(kBlock, it.numel - begin);
      it.run(it, weight_decay, begin, n, block_noise(st, it.offset + begin, n, buf));
    }
  });
  if (in_place) {
    for (size_t k = 0; k < nt; ++k) {
      if (!outs[k].is_same(params[k])) params[k].copy_(outs[k]);
    }
  }
}

std::vector<at::Tensor> dropgrad_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList lrs,
                                          double lr, double p, int64_t mode, int64_t seed, int64_t offset,
                                          const OptTensor& rng_state, int64_t batch) {
  std::vector<at::Tensor> outs;
  step_cpu(params, grads, lrs, lr, 0.0, p, mode, seed, offset, rng_state, batch, false, outs);
  return outs;
}

void dropgrad_step__cpu(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                        double weight_decay, double p, int64_t mode, int64_t seed, int64_t offset,
                        const OptTensor& rng_state) {
  std::vector<at::Tensor> outs;
  step_cpu(params, grads, lrs, lr, weight_decay, p, mode, seed, offset, rng_state, 0, true, outs);
}

at::Tensor meta_dropout_cpu(const at::Tensor& f, const at::Tensor& a, bool deterministic, int64_t seed,
                            int64_t offset, const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  check_floating(f, "f");
  check_floating(a, "a");
  TORCH_CHECK(f.sizes() == a.sizes() && f.scalar_type() == a.scalar_type(), "f and a must have the same shape and dtype");
  at::Tensor out = empty_output(f);
  const at::Tensor fc = dg::in_layout(f, out), ac = dg::in_layout(a, out);
  const Stream st = make_stream(0.0, deterministic ? dg::kNone : dg::kNormal, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fc.scalar_type(), "meta_dropout", [&] {
    const scalar_t* fp = fc.data_ptr<scalar_t>();
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(fc.numel(), offset, st, [&](int64_t b, int64_t n, const float* nz) {
      meta_dropout_range(fp + b, ap + b, op + b, n, nz);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> meta_dropout_backward_cpu(const at::Tensor& grad_out, const at::Tensor& f,
                                                             const at::Tensor& a, bool deterministic, int64_t seed,
                                                             int64_t offset, const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  check_floating(grad_out, "grad_out");
  TORCH_CHECK(grad_out.sizes() == f.sizes() && f.sizes() == a.sizes(), "grad_out, f and a must have the same shape");
  at::Tensor gf = empty_output(f);
  at::Tensor ga = empty_output(f);
  const at::Tensor gc = dg::in_layout(grad_out.to(f.scalar_type()), gf);
  const at::Tensor fc = dg::in_layout(f, gf), ac = dg::in_layout(a, gf);
  const Stream st = make_stream(0.0, deterministic ? dg::kNone : dg::kNormal, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fc.scalar_type(), "meta_dropout_backward", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* fp = fc.data_ptr<scalar_t>();
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    scalar_t* gfp = gf.data_ptr<scalar_t>();
    scalar_t* gap = ga.data_ptr<scalar_t>();
    for_each_block(fc.numel(), offset, st, [&](int64_t b, int64_t n, const float* nz) {
      meta_dropout_backward_range(gp + b, fp + b, ap + b, gfp + b, gap + b, n, nz);
    });
  });
  return {gf, ga};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meta_dropout_double_backward_cpu(
    const at::Tensor& grad_grad_f, const at::Tensor& grad_grad_a, const at::Tensor& grad_out, const at::Tensor& f,
    const at::Tensor& a, bool deterministic, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  resolve_seed(rng_state, seed, offset);
  check_floating(f, "f");
  for (const at::Tensor* t : {&grad_grad_f, &grad_grad_a, &grad_out, &a}) {
    TORCH_CHECK(t->sizes() == f.sizes() && t->device() == f.device(),
                "grad_grad_f, grad_grad_a, grad_out, f and a must have the same shape and device");
  }
  const auto dt = f.scalar_type();
  at::Tensor d_gout = empty_output(f), d_f = empty_output(f), d_a = empty_output(f);
  const at::Tensor ggf = dg::in_layout(grad_grad_f.to(dt), d_f), gga = dg::in_layout(grad_grad_a.to(dt), d_f);
  const at::Tensor gc = dg::in_layout(grad_out.to(dt), d_f), fc = dg::in_layout(f, d_f), ac = dg::in_layout(a.to(dt), d_f);
  const Stream st = make_stream(0.0, deterministic ? dg::kNone : dg::kNormal, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "meta_dropout_double_backward", [&] {
    const scalar_t *p0 = ggf.data_ptr<scalar_t>(), *p1 = gga.data_ptr<scalar_t>(), *p2 = gc.data_ptr<scalar_t>();
    const scalar_t *p3 = fc.data_ptr<scalar_t>(), *p4 = ac.data_ptr<scalar_t>();
    scalar_t *o0 = d_gout.data_ptr<scalar_t>(), *o1 = d_f.data_ptr<scalar_t>(), *o2 = d_a.data_ptr<scalar_t>();
    for_each_block(fc.numel(), offset, st, [&](int64_t b, int64_t n, const float* nz) {
      meta_dropout_double_backward_range(p0 + b, p1 + b, p2 + b, p3 + b, p4 + b, o0 + b, o1 + b, o2 + b, n, nz);
    });
  });
  return {d_gout, d_f, d_a};
}

}  // namespace

TORCH_LIBRARY_IMPL(dropgrad, CPU, m) {
  m.impl("philox4x32_10", &philox4x32_10_cpu);
  m.impl("noise", &noise_cpu);
  m.impl("drop_grad", &drop_grad_cpu);
  m.impl("dropgrad_update", &dropgrad_update_cpu);
  m.impl("dropgrad_step", &dropgrad_step_cpu);
  m.impl("dropgrad_step_", &dropgrad_step__cpu);
  m.impl("meta_dropout", &meta_dropout_cpu);
  m.impl("meta_dropout_backward", &meta_dropout_backward_cpu);
  m.impl("meta_dropout_double_backward", &meta_dropout_double_backward_cpu);
}
