// CPU kernels of the dropgrad:: ops. The noise of a stream is produced in blocks of kBlock
// elements into a stack buffer (so it never touches memory) and consumed by the element loop.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
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
  int64_t element_size;
  int64_t offset;
  void (*run)(const StepItem&, double weight_decay, int64_t begin, int64_t n, const float* noise);
};

// The element code once per instruction set (kernels.inc says why); DG_KERNEL(fn) is fn of the
// instruction set the kernels run with now.
namespace isa_default {
#define DG_ISA 0
#include "kernels.inc"
#undef DG_ISA
}  // namespace isa_default
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#define DG_ISA 1
#include "kernels.inc"
#undef DG_ISA
}  // namespace isa_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=512")
namespace isa_avx512 {
#define DG_ISA 2
#include "kernels.inc"
#undef DG_ISA
}  // namespace isa_avx512
#pragma GCC pop_options

// 0 baseline, 1 AVX2 with FMA, 2 AVX-512 (F, BW, DQ, VL; F includes FMA): the best this CPU runs,
// or DROPGRAD_CPU_ISA's (default, avx2, avx512) if this CPU runs it; dg::set_cpu_isa changes it
// (the tests force each).
int best_cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    return 2;
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}

constexpr const char* kIsaNames[] = {"default", "avx2", "avx512"};

std::atomic<int>& cpu_isa_level() {
  static std::atomic<int> level = [] {
    const char* v = std::getenv("DROPGRAD_CPU_ISA");
    for (int i = 0; v != nullptr && i <= best_cpu_isa(); ++i) {
      if (std::strcmp(v, kIsaNames[i]) == 0) return i;
    }
    return best_cpu_isa();
  }();
  return level;
}

#define DG_KERNEL(fn)                                                        \
  (cpu_isa_level().load(std::memory_order_relaxed) == 2   ? &isa_avx512::fn \
   : cpu_isa_level().load(std::memory_order_relaxed) == 1 ? &isa_avx2::fn   \
                                                          : &isa_default::fn)

// A tensor a block's body reads: its data and element size (prefetch_block).
struct Operand {
  const void* data;
  int64_t element_size;
};

Operand operand(const at::Tensor& t) { return {t.data_ptr(), t.element_size()}; }

// Requests elements [begin, begin + n) of each operand into the cache before the block's noise is
// made: the noise is compute and the block's loads are memory, and the hardware prefetchers do
// not fetch ahead across the compute; with the requests in flight the two overlap. Measured (AMD
// EPYC Zen 4, AVX-512, 2 threads, builds alternated): the in-place Gaussian step at 16M 7.4-7.8 ->
// 6.0 ms (1.5x -> 1.2x a copy of its bytes), the noiseless one 4.7 -> 3.5-3.7 ms, meta_dropout's
// forward at 11M 21.5-22.1 -> 17.8 ms.
void prefetch_block(std::initializer_list<Operand> ops, int64_t begin, int64_t n) {
  for (const Operand& o : ops) {
    if (o.data == nullptr) continue;
    const char* p = static_cast<const char*>(o.data) + begin * o.element_size;
    for (int64_t i = 0; i < n * o.element_size; i += 64) __builtin_prefetch(p + i);
  }
}

// Calls body(begin, n, noise) over [0, numel) in kBlock pieces, in parallel, each block's `reads`
// prefetched first. `offset` is the stream position of element 0.
template <typename Body>
void for_each_block(int64_t numel, int64_t offset, const Stream& st, std::initializer_list<Operand> reads,
                    const Body& body) {
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, nblocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t n = std::min(kBlock, numel - begin);
      prefetch_block(reads, begin, n);
      body(begin, n, DG_KERNEL(block_noise)(st, offset + begin, n, buf));
    }
  });
}


void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  dg::check_float(t, name);
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
  switch (dg::lr_form(*lr_tensor, param, batch)) {
    case dg::LrForm::kScalar: return {lr_tensor->item<double>(), at::Tensor()};
    case dg::LrForm::kShared: return {0.0, lr_tensor->contiguous(), 0};
    case dg::LrForm::kFull: break;
  }
  return {0.0, dg::in_layout(*lr_tensor, out), param.numel() / std::max<int64_t>(batch, 1)};
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
  dg::check_stream_args(p, mode, offset, like.numel());
  resolve_seed(rng_state, seed, offset);
  at::Tensor out = empty_output(like, like.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const Stream st = make_stream(p, mode, seed);
  if (st.np.mode == dg::kNone) return out.fill_(1.0f);
  for_each_block(out.numel(), offset, st, {}, [&](int64_t begin, int64_t n, const float* nz) {
    std::copy(nz, nz + n, o + begin);
  });
  return out;
}

at::Tensor drop_grad_cpu(const at::Tensor& grad, double p, int64_t mode, int64_t seed, int64_t offset,
                         const OptTensor& rng_state) {
  dg::check_stream_args(p, mode, offset, grad.numel());
  resolve_seed(rng_state, seed, offset);
  check_floating(grad, "grad");
  at::Tensor out = empty_output(grad);
  const at::Tensor g = dg::in_layout(grad, out);
  const Stream st = make_stream(p, mode, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "drop_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(g.numel(), offset, st, {operand(g)}, [&](int64_t b, int64_t n, const float* nz) {
      DG_KERNEL(drop_grad_range<scalar_t>)(gp + b, op + b, n, nz);
    });
  });
  return out;
}

at::Tensor dropgrad_update_cpu(const at::Tensor& param, const at::Tensor& grad,
                               const OptTensor& lr_tensor, double lr, double p,
                               int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(p, mode, offset, param.numel());
  resolve_seed(rng_state, seed, offset);
  check_floating(param, "param");
  dg::check_pair(param, grad, "param", "grad");
  if (lr_tensor.has_value() && lr_tensor->defined()) dg::check_lr(*lr_tensor, param, "lr");
  at::Tensor out = empty_output(param);
  const at::Tensor pc = dg::in_layout(param, out), gc = dg::in_layout(grad, out);
  const LearningRate l = resolve_lr(lr_tensor, lr, param, out);
  const Stream st = make_stream(p, mode, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(), "dropgrad_update", [&] {
    const scalar_t* pp = pc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* lp = l.vec.defined() ? l.vec.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(pc.numel(), offset, st, {operand(pc), operand(gc), {lp, pc.element_size()}},
                   [&](int64_t b, int64_t n, const float* nz) {
      DG_KERNEL(update_range<scalar_t>)(pp + b, gp + b, lp ? lp + b : nullptr, l.scalar, op + b, n, nz);
    });
  });
  return out;
}


// The whole list in one parallel region: blocks of all tensors are numbered consecutively and
// each worker finds its tensor by binary search. Tensor k's stream starts where tensor k-1's
// ends, rounded up to a multiple of 4; with batch > 0 each tensor is `batch` rows, one per list,
// and list b's stream starts b list spans after list 0's. outs: new tensors, or (in place) the
// params, one that is not dense through a contiguous copy written back at the end.
void step_cpu(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr, double weight_decay,
              double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state, int64_t batch,
              bool in_place, std::vector<at::Tensor>& outs) {
  dg::check_stream_args(p, mode, offset, dg::list_span(params));
  resolve_seed(rng_state, seed, offset);
  dg::check_lists(params, grads, lrs, batch);
  const size_t nt = params.size();
  const int64_t list_span = dg::batch_list_span(params, batch), rows = std::max<int64_t>(batch, 1);
  std::vector<at::Tensor> keep;  // contiguous copies and lr arrays, alive until the end
  std::vector<StepItem> items(nt * rows);
  std::vector<int64_t> first_block(nt * rows + 1, 0);
  outs.resize(nt);
  int64_t start = offset;
  for (size_t k = 0; k < nt; ++k) {
    check_floating(params[k], "params");
    // In place, a dense param is written where it lies; another through a contiguous copy.
    outs[k] = !in_place ? empty_output(params[k], params[k].options(), batch > 0)
              : params[k].is_non_overlapping_and_dense() ? params[k] : params[k].contiguous();
    const at::Tensor w = in_place ? outs[k] : dg::in_layout(params[k], outs[k]), g = dg::in_layout(grads[k], outs[k]);
    const LearningRate l = resolve_lr(lrs.empty() ? OptTensor() : OptTensor(lrs[k]), lr, params[k], outs[k], batch);
    decltype(StepItem::run) run = nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "dropgrad_step",
                                    [&] { run = in_place ? DG_KERNEL(run_step_<scalar_t>) : DG_KERNEL(run_update<scalar_t>); });
    const int64_t row = w.numel() / rows, bytes = row * w.element_size(), lr_bytes = l.row * w.element_size();
    for (int64_t b = 0; b < rows; ++b) {
      const size_t i = k * rows + b;
      items[i] = {static_cast<const char*>(w.data_ptr()) + b * bytes, static_cast<const char*>(g.data_ptr()) + b * bytes,
                  l.vec.defined() ? static_cast<const char*>(l.vec.data_ptr()) + b * lr_bytes : nullptr, l.scalar,
                  static_cast<char*>(outs[k].data_ptr()) + b * bytes, row, w.element_size(), start + b * list_span, run};
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
      const int64_t esz = it.element_size;
      prefetch_block({{it.param, esz}, {it.grad, esz}, {it.lr_vec, esz}}, begin, n);
      it.run(it, weight_decay, begin, n, DG_KERNEL(block_noise)(st, it.offset + begin, n, buf));
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

void dropgrad_step_in_place_cpu(at::TensorList params, at::TensorList grads, at::TensorList lrs, double lr,
                        double weight_decay, double p, int64_t mode, int64_t seed, int64_t offset,
                        const OptTensor& rng_state) {
  std::vector<at::Tensor> outs;
  step_cpu(params, grads, lrs, lr, weight_decay, p, mode, seed, offset, rng_state, 0, true, outs);
}

at::Tensor meta_dropout_cpu(const at::Tensor& f, const at::Tensor& a, bool deterministic, int64_t seed,
                            int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
  resolve_seed(rng_state, seed, offset);
  check_floating(f, "f");
  dg::check_pair(f, a, "f", "a");
  at::Tensor out = empty_output(f);
  const at::Tensor fc = dg::in_layout(f, out), ac = dg::in_layout(a, out);
  const Stream st = make_stream(0.0, deterministic ? dg::kNone : dg::kNormal, seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fc.scalar_type(), "meta_dropout", [&] {
    const scalar_t* fp = fc.data_ptr<scalar_t>();
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_block(fc.numel(), offset, st, {operand(fc), operand(ac)}, [&](int64_t b, int64_t n, const float* nz) {
      DG_KERNEL(meta_dropout_range<scalar_t>)(fp + b, ap + b, op + b, n, nz);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> meta_dropout_backward_cpu(const at::Tensor& grad_out, const at::Tensor& f,
                                                             const at::Tensor& a, bool deterministic, int64_t seed,
                                                             int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
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
    for_each_block(fc.numel(), offset, st, {operand(gc), operand(fc), operand(ac)},
                   [&](int64_t b, int64_t n, const float* nz) {
      DG_KERNEL(meta_dropout_backward_range<scalar_t>)(gp + b, fp + b, ap + b, gfp + b, gap + b, n, nz);
    });
  });
  return {gf, ga};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meta_dropout_double_backward_cpu(
    const at::Tensor& grad_grad_f, const at::Tensor& grad_grad_a, const at::Tensor& grad_out, const at::Tensor& f,
    const at::Tensor& a, bool deterministic, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  dg::check_stream_args(0.0, deterministic ? dg::kNone : dg::kNormal, offset, f.numel());
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
    for_each_block(fc.numel(), offset, st, {operand(ggf), operand(gga), operand(gc), operand(fc), operand(ac)},
                   [&](int64_t b, int64_t n, const float* nz) {
      DG_KERNEL(meta_dropout_double_backward_range<scalar_t>)(p0 + b, p1 + b, p2 + b, p3 + b, p4 + b, o0 + b, o1 + b, o2 + b, n, nz);
    });
  });
  return {d_gout, d_f, d_a};
}

}  // namespace

int dg::cpu_isas() { return best_cpu_isa() + 1; }

const char* dg::cpu_isa() { return kIsaNames[cpu_isa_level().load()]; }

bool dg::set_cpu_isa(const char* name) {
  for (int i = 0; i <= best_cpu_isa(); ++i) {
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      cpu_isa_level().store(i);
      return true;
    }
  }
  return false;
}

TORCH_LIBRARY_IMPL(dropgrad, CPU, m) {
  m.impl("philox4x32_10", &philox4x32_10_cpu);
  m.impl("noise", &noise_cpu);
  m.impl("drop_grad", &drop_grad_cpu);
  m.impl("dropgrad_update", &dropgrad_update_cpu);
  m.impl("dropgrad_step", &dropgrad_step_cpu);
  m.impl("dropgrad_step_", &dropgrad_step_in_place_cpu);
  m.impl("meta_dropout", &meta_dropout_cpu);
  m.impl("meta_dropout_backward", &meta_dropout_backward_cpu);
  m.impl("meta_dropout_double_backward", &meta_dropout_double_backward_cpu);
}
