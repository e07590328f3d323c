// Per-element math of the noise contract (docs/noise_contract.md), shared unchanged by the CPU
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda). dropgrad_cuda/reference.py and the Triton
// kernels spell out the same operations in the same order, so every backend agrees bit for bit
// as long as no multiply-add is contracted into an FMA (built with -ffp-contract=off / --fmad=false)
// but the contract's own, written as fma_f.
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define DG_HD __host__ __device__ __forceinline__
#else
// Forced: GCC otherwise leaves the larger ones (softplus) as calls, which stops vectorization.
#define DG_HD inline __attribute__((always_inline))
#endif

namespace dg {

// Noise modes as the ops' schemas pass them.
enum Mode : int64_t { kNone = 0, kBernoulli = 1, kGaussian = 2, kNormal = 3 };

// The stream length a tensor of numel elements takes in a multi-tensor call: numel rounded up to
// a multiple of 4 (one Philox call serves four elements), so tensor k's noise starts where tensor
// k-1's ends (docs/noise_contract.md; reference.span in Python).
// A template for the symbolic sizes of torch.compile's dynamic shapes too (c10::SymInt).
template <typename Int>
DG_HD Int span(Int numel) { return (numel + 3) / 4 * 4; }

// Philox's round keys: round r's key is the seed's (k0, k1) plus r times the Weyl constants. They
// depend only on the seed, so every kernel takes them ready-made with its stream (Stream::keys): a
// CUDA thread would otherwise add them again for every counter (20 integer adds a counter).
struct RoundKeys {
  uint32_t k[20];
};

DG_HD RoundKeys round_keys(uint32_t k0, uint32_t k1) {
  RoundKeys ks;
  for (int r = 0; r < 10; ++r) {
    ks.k[2 * r] = k0 + static_cast<uint32_t>(r) * 0x9E3779B9u;
    ks.k[2 * r + 1] = k1 + static_cast<uint32_t>(r) * 0xBB67AE85u;
  }
  return ks;
}

// Philox4x32-10 exactly as triton/language/random.py:philox_impl.
DG_HD void philox4x32_10(uint32_t c[4], const RoundKeys& ks) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint64_t pa = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c[1] ^ ks.k[2 * r];
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c[3] ^ ks.k[2 * r + 1];
    c[1] = static_cast<uint32_t>(pb);
    c[3] = static_cast<uint32_t>(pa);
    c[0] = n0;
    c[2] = n2;
  }
}

DG_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) { philox4x32_10(c, round_keys(k0, k1)); }

// Triton's uint_to_uniform_float: [0, 1) from the int32 view of a word.
DG_HD float uniform(uint32_t w) {
  int32_t x = static_cast<int32_t>(w);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * static_cast<float>(4.6566127342e-10);
}

// The bits of a float as an integer or back (std::bit_cast before C++20; memcpy is a register
// move on both host and device).
template <typename To, typename From>
DG_HD To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To r;
  memcpy(&r, &v, sizeof(To));
  return r;
}

// a * b + c rounded once (IEEE fusedMultiplyAdd): the contract's multiply-adds, at fixed places,
// so every backend computes the same: an FFMA on a GPU, a vfmadd in the CPU kernels' AVX2 and
// AVX-512 builds. Soft: the CPU kernels' baseline build, for CPUs without an FMA instruction,
// where __builtin_fmaf is a call to libm (one per FMA, no vectorization: 6x slower, measured):
// the reference's exact form instead, inline. The product is exact in double, TwoSum gives the
// sum's rounding error, and the sum rounded to odd (an inexact sum with an even last bit moves one
// ulp toward the exact value) rounds to float as the exact value would (Boldo and Melquiond).
// Every function below that takes Soft passes it on; only the baseline build sets it.
template <bool Soft = false>
DG_HD float fma_f(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  if constexpr (Soft) {
    const double p = static_cast<double>(a) * static_cast<double>(b);
    const double cd = c;
    const double s = p + cd;
    const double bb = s - p;
    const double err = (p - (s - bb)) + (cd - bb);
    const uint64_t bits = bit_cast<uint64_t>(s);
    const uint64_t toward = (err > 0.0) == (s > 0.0) ? 1u : ~uint64_t{0};  // +1 or -1 in magnitude
    return static_cast<float>(bit_cast<double>(bits + (err != 0.0 && (bits & 1u) == 0 ? toward : 0u)));
  } else {
    return __builtin_fmaf(a, b, c);
  }
#endif
}

// Cephes logf for normal positive x, its polynomial by Horner's rule in FMAs, branch-free so loops
// of it vectorize. Part of the contract: libm's logf differs between platforms, this does not.
template <bool Soft = false>
DG_HD float log_f(float x) {
  const uint32_t b = bit_cast<uint32_t>(x);
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)): s = 1 when the mantissa is below sqrt(1/2)'s, and
  // then m doubles by its exponent bit. Integer arithmetic, not a select: GCC threads a select
  // through the whole polynomial and vectorizes both paths (2x the work, measured).
  const uint32_t s = ((b & 0x7fffffu) - 0x3504f3u) >> 31;
  const float e = static_cast<float>(static_cast<int32_t>((b >> 23) & 0xffu) - 126 - static_cast<int32_t>(s));
  const float m = bit_cast<float>(((b & 0x807fffffu) | 0x3f000000u) + (s << 23)) - 1.0f;
  const float z = m * m;
  float y = static_cast<float>(7.0376836292E-2);
  y = fma_f<Soft>(y, m, static_cast<float>(-1.1514610310E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(1.1676998740E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(-1.2420140846E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(1.4249322787E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(-1.6668057665E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(2.0000714765E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(-2.4999993993E-1));
  y = fma_f<Soft>(y, m, static_cast<float>(3.3333331174E-1));
  y = (y * m) * z;
  y = fma_f<Soft>(e, static_cast<float>(-2.12194440E-4), y);
  y = fma_f<Soft>(z, -0.5f, y);
  return fma_f<Soft>(e, 0.693359375f, m + y);
}

// Box-Muller's radius sqrt(-2 ln u) from the even word: u = (w >> 9) 2^-23 + 2^-24, exact and in
// [2^-24, 1 - 2^-24], so it needs no clamp (|z| <= sqrt(48 ln 2) = 5.77).
template <bool Soft = false>
DG_HD float box_muller_radius(uint32_t w_even) {
  const float u = fma_f<Soft>(static_cast<float>(static_cast<int32_t>(w_even >> 9)), 0x1p-23f, 0x1p-24f);
  return sqrtf(log_f<Soft>(u) * -2.0f);
}

// Box-Muller's angle from the odd word: its top two bits are the quadrant q and its next 24 the
// position x in [-pi/4, pi/4) within it, so theta = q pi/2 + x is uniform on a turn with no range
// reduction. This returns x, exact but for the last rounding.
template <bool Soft = false>
DG_HD float box_muller_angle(uint32_t w_odd) {
  const float t = static_cast<float>(static_cast<int32_t>((w_odd >> 6) & 0xffffffu));
  return fma_f<Soft>(t, static_cast<float>(1.57079632679489662 / 16777216.0),
                     static_cast<float>(-0.785398163397448310));
}

// sin and cos of theta = q pi/2 + x (x from box_muller_angle, q the word's top bits): Cephes' sinf
// and cosf polynomials for |x| <= pi/4 in FMAs, rotated by the quadrant (a swap and sign flips).
template <bool Soft = false>
DG_HD void sincos_f(float x, uint32_t w_odd, float* s, float* c) {
  const float z = x * x;
  float ps = fma_f<Soft>(static_cast<float>(-1.9515295891E-4), z, static_cast<float>(8.3321608736E-3));
  ps = fma_f<Soft>(ps, z, static_cast<float>(-1.6666654611E-1));
  const float sy = fma_f<Soft>(x * z, ps, x);
  float pc = fma_f<Soft>(static_cast<float>(2.443315711809948E-5), z, static_cast<float>(-1.388731625493765E-3));
  pc = fma_f<Soft>(pc, z, static_cast<float>(4.166664568298827E-2));
  const float cy = fma_f<Soft>(z * z, pc, fma_f<Soft>(z, -0.5f, 1.0f));
  // q = 1, 3 swap sin and cos; sin is negative for q = 2, 3 (bit 31), cos for q = 1, 2 (bits 31 ^ 30).
  const bool swap = (w_odd >> 30) & 1u;
  const float sv = swap ? cy : sy;
  const float cv = swap ? sy : cy;
  *s = bit_cast<float>(bit_cast<uint32_t>(sv) ^ (w_odd & 0x80000000u));
  *c = bit_cast<float>(bit_cast<uint32_t>(cv) ^ ((w_odd ^ (w_odd << 1)) & 0x80000000u));
}

// Box-Muller on one word pair: the even element gets r*cos, the odd one r*sin.
DG_HD void box_muller(uint32_t w_even, uint32_t w_odd, float* z_even, float* z_odd) {
  const float r = box_muller_radius(w_even);
  float s, c;
  sincos_f(box_muller_angle(w_odd), w_odd, &s, &c);
  *z_even = r * c;
  *z_odd = r * s;
}

// Host-side constants of a (mode, p) pair, rounded to float32 once so every backend uses the same.
struct NoiseParams {
  int32_t mode;  // a Mode, in 32 bits: a GPU tests a 64-bit one with two compares, in every loop pass
  float p;      // Bernoulli keeps where uniform > p
  float scale;  // Bernoulli 1/(1-p)
  float sigma;  // Gaussian sqrt(p/(1-p))
};

// The mode a stream runs: none when p is 0, but "normal" (raw N(0,1)), which takes no p. The one
// test of whether an op draws noise, for the kernels and the batching rules alike.
inline int64_t noise_mode(int64_t mode, double p) { return (p == 0.0 && mode != kNormal) ? kNone : mode; }

inline NoiseParams make_noise_params(int64_t mode, double p) {
  NoiseParams np;
  np.mode = static_cast<int32_t>(noise_mode(mode, p));
  np.p = static_cast<float>(p);
  np.scale = static_cast<float>(1.0 / (1.0 - p));
  np.sigma = static_cast<float>(std::sqrt(p / (1.0 - p)));
  return np;
}

// The four words of Philox counter q: stream elements 4q .. 4q+3.
DG_HD void words4(uint64_t q, const RoundKeys& ks, uint32_t c[4]) {
  c[0] = static_cast<uint32_t>(q);
  c[1] = static_cast<uint32_t>(q >> 32);
  c[2] = 0u;
  c[3] = 0u;
  philox4x32_10(c, ks);
}

// Per-element noise, word to value.
DG_HD float bernoulli(float p, float scale, uint32_t w) { return uniform(w) > p ? scale : 0.0f; }

template <bool Soft = false>
DG_HD float gaussian(float sigma, float z) { return fma_f<Soft>(sigma, z, 1.0f); }

// exp(x) for x <= 0 (softplus' exp(-|z|)): Cephes expf in FMAs, branch-free for vectorization; 0
// below -87.3, where 2^n would leave the normal range (expf gives denormals there).
template <bool Soft = false>
DG_HD float exp_f(float x0) {
  const float x1 = x0 < -87.3f ? -87.3f : x0;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (no floor call, so the loop vectorizes).
  const float n = fma_f<Soft>(x1, static_cast<float>(1.44269504088896341), 12582912.0f) - 12582912.0f;
  const int32_t i = static_cast<int32_t>(n);
  float x = fma_f<Soft>(n, -0.693359375f, x1);
  x = fma_f<Soft>(n, static_cast<float>(2.12194440E-4), x);
  const float z = x * x;
  float y = static_cast<float>(1.9875691500E-4);
  y = fma_f<Soft>(y, x, static_cast<float>(1.3981999507E-3));
  y = fma_f<Soft>(y, x, static_cast<float>(8.3334519073E-3));
  y = fma_f<Soft>(y, x, static_cast<float>(4.1665795894E-2));
  y = fma_f<Soft>(y, x, static_cast<float>(1.6666665459E-1));
  y = fma_f<Soft>(y, x, static_cast<float>(5.0000001201E-1));
  y = fma_f<Soft>(y, z, x) + 1.0f;
  y = y * bit_cast<float>(static_cast<uint32_t>(i + 127) << 23);
  return x0 < -87.3f ? 0.0f : y;
}

// base + log(1 + e) for e in [0, 1], as e (1 + e Q(e)) + base in two FMAs: Q a degree-8 polynomial
// fitted to (log1p(e)/e - 1)/e (Lawson-weighted least squares on Chebyshev nodes, float32
// coefficients). With exp_f, softplus within 2 ulps of the exact one and of PyTorch's (measured
// on a 2M-point grid of z in [-87, 25]); no log and no division.
template <bool Soft = false>
DG_HD float log1p_f(float e, float base) {
  float y = -0.004518846981227398f;
  y = fma_f<Soft>(y, e, 0.02543756738305092f);
  y = fma_f<Soft>(y, e, -0.06711038947105408f);
  y = fma_f<Soft>(y, e, 0.11592266708612442f);
  y = fma_f<Soft>(y, e, -0.15862157940864563f);
  y = fma_f<Soft>(y, e, 0.19857926666736603f);
  y = fma_f<Soft>(y, e, -0.2498702108860016f);
  y = fma_f<Soft>(y, e, 0.3333286643028259f);
  y = fma_f<Soft>(y, e, -0.4999999701976776f);
  return fma_f<Soft>(e, fma_f<Soft>(y, e, 1.0f), base);
}

// The four noise values of Philox counter q (elements 4q .. 4q+3 of the stream): the unit of work
// of a CUDA thread. The mode M (not kNone) is a template argument: each kernel loop is built per
// mode, so no loop pass tests it.
template <int M>
DG_HD void noise4(const NoiseParams& np, uint64_t q, const RoundKeys& ks, float n[4]) {
  uint32_t c[4];
  words4(q, ks, c);
  if constexpr (M == kBernoulli) {
    for (int i = 0; i < 4; ++i) n[i] = bernoulli(np.p, np.scale, c[i]);
  } else {
    box_muller(c[0], c[1], &n[0], &n[1]);
    box_muller(c[2], c[3], &n[2], &n[3]);
    if constexpr (M == kGaussian) {
      for (int i = 0; i < 4; ++i) n[i] = gaussian(np.sigma, n[i]);
    }
  }
}

// A stream's constants and Philox round keys, as the host passes them to a kernel.
struct Stream {
  NoiseParams np;
  RoundKeys keys;
};

// The round keys of a seed: its low and high words are the Philox key (k0, k1).
DG_HD RoundKeys seed_keys(uint64_t seed) {
  return round_keys(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

inline Stream make_stream(double p, int64_t mode, int64_t seed) {
  return {make_noise_params(mode, p), seed_keys(static_cast<uint64_t>(seed))};
}

// PyTorch's softplus (beta 1, threshold 20) and its derivative, in the compute type T. The
// float versions use the polynomials above so the kernels vectorize (libm's are scalar calls);
// they agree with PyTorch's own to a few ulps (tested).
template <typename T>
DG_HD T softplus(T z) {
  using std::exp;
  using std::log1p;
  return z > T(20) ? z : log1p(exp(z));
}

// softplus<float> in two steps, so CPU loops can run them as separate passes: one loop with both
// polynomials outgrows AVX2's 16 registers and runs 2x slower (measured). Same operations.
template <bool Soft = false>
DG_HD float softplus_exp(float z) { return exp_f<Soft>(z < 0.0f ? z : -z); }

template <bool Soft = false>
DG_HD float softplus_from_exp(float z, float e) {
  const float r = log1p_f<Soft>(e, z > 0.0f ? z : 0.0f);
  return z > 20.0f ? z : r;
}

template <>
DG_HD float softplus<float>(float z) {
  return softplus_from_exp(z, softplus_exp(z));
}

template <typename T>
DG_HD T softplus_grad(T z) {
  using std::exp;
  return z > T(20) ? T(1) : T(1) / (T(1) + exp(-z));
}

// sigmoid(z) from e = exp(-|z|), the exponential softplus already needs: e / (1 + e) below 0 (as
// PyTorch's softplus_backward computes it), 1 / (1 + e) above.
DG_HD float softplus_grad_from_exp(float z, float e) {
  const float r = (z < 0.0f ? e : 1.0f) / (1.0f + e);
  return z > 20.0f ? 1.0f : r;
}

template <>
DG_HD float softplus_grad<float>(float z) {
  return softplus_grad_from_exp(z, softplus_exp(z));
}

// softplus''(z) = sigmoid(z) * sigmoid(-z) = e / (1 + e)^2 with e = exp(-|z|): no cancellation in
// 1 - sigmoid(z) for large z; 0 above PyTorch's threshold 20, where softplus is the identity.
template <typename T>
DG_HD T softplus_grad2_from_exp(T z, T e) {
  const T r = e / ((T(1) + e) * (T(1) + e));
  return z > T(20) ? T(0) : r;
}
template <typename T>
DG_HD T softplus_grad2(T z) {
  using std::exp;
  return softplus_grad2_from_exp(z, exp(z < T(0) ? z : -z));
}
template <>
DG_HD float softplus_grad2<float>(float z) {
  return softplus_grad2_from_exp(z, softplus_exp(z));
}
// The double backward of meta_dropout at one element: the derivative of its backward
// (gf = gout * sp, ga = gout * f * s) along (ggf, gga), from sp = softplus(z), s = softplus'(z)
// and ds = softplus''(z). Returns (d gout, d f, d a) in that operation order (the reference's).
template <typename A>
DG_HD void meta_dropout_double_backward(A ggf, A gga, A gout, A f, A sp, A s, A ds, A* d_gout, A* d_f, A* d_a) {
  *d_gout = ggf * sp + (gga * f) * s;
  *d_f = (gga * gout) * s;
  *d_a = (ggf * gout) * s + ((gga * gout) * f) * ds;
}
}  // namespace dg
