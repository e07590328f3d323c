// The schemas of the kernel ops (csrc/ops.cpp), shared by every namespace that registers them.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dropgrad_math.h"

namespace dg {
// The schema of every kernel op, in the order define_ops defines them for a namespace.
const std::vector<const char*>& op_schemas();
void define_ops(torch::Library& m);

// dropgrad_step's batch argument, as every C++ kernel reads it after check_lists: the span of one
// list, the stream distance from list b to list b + 1 (0 when batch is 0: one list).
int64_t batch_list_span(at::TensorList params, int64_t batch);

// The checks of an op's stream arguments, written once for every namespace: the C++ kernels call
// it, the Python ones (the reference's, Triton's) and the public functions through
// torch.ops.dropgrad_checks (dropgrad_cuda/_checks.py), so a bad p, mode or offset raises the same
// ValueError with the same message wherever it is passed. span: the stream length the call reads (numel; a list's
// spans), which the offset must leave room for.
void check_stream_args(double p, int64_t mode, int64_t offset, int64_t span);

// The checks of an op's tensor arguments, written once for every namespace as check_stream_args
// is (the Python side through torch.ops.dropgrad_checks): the same exception
// type and message, naming the argument, for the same mistake. Dtypes, shapes and devices are
// written as Python writes them (torch.float32, (4, 3), cpu).
void check_float(const at::Tensor& t, const std::string& name);
// b beside a: a floating tensor of a's shape, dtype and device.
void check_pair(const at::Tensor& a, const at::Tensor& b, const std::string& an, const std::string& bn);
// A tensor lr beside param: floating, on param's device, with one element or param's shape (and
// then param's dtype).
void check_lr(const at::Tensor& lr, const at::Tensor& param, const std::string& name);
// A list call's params, grads and lrs: equal lengths, each pair as check_pair, one device, lrs
// empty or one per param, each as check_lr; with batch > 0 (dropgrad_step under vmap: each param
// holds `batch` lists' rows along dim 0) each lr may also be one list's shape, param.shape[1:].
void check_lists(at::TensorList params, at::TensorList grads, at::TensorList lrs, int64_t batch);

// The form of a tensor lr that check_lr or check_lists admitted, as every kernel reads it: one
// element (a scalar), param's shape (an lr an element), or one list's shape shared by a batch.
enum class LrForm { kScalar, kFull, kShared };
inline LrForm lr_form(const at::Tensor& lr, const at::Tensor& param, int64_t batch = 0) {
  if (lr.numel() == 1) return LrForm::kScalar;
  return batch > 0 && lr.sizes() == param.sizes().slice(1) ? LrForm::kShared : LrForm::kFull;
}

// The stream length of a list: its tensors' spans added up.
inline int64_t list_span(at::TensorList ts) {
  int64_t total = 0;
  for (const at::Tensor& t : ts) total += span(t.numel());
  return total;
}

// The instruction set the CPU kernels run with (csrc/cpu/kernels.inc): "default", "avx2" or
// "avx512". cpu_isas(): how many of those, in that order, this CPU runs. set_cpu_isa: false (and
// nothing changed) for a name this CPU does not run.
int cpu_isas();
const char* cpu_isa();
bool set_cpu_isa(const char* name);

// Memory layouts (docs/noise_contract.md): an op computes in, and returns, the layout torch's
// preserve_format gives its first tensor (its own strides when it is dense, as channels_last is;
// else contiguous). Its kernels walk memory in order, so an element's noise follows its memory
// position in that layout. A batch of lists (dropgrad_step's batch > 0) is contiguous: the kernels
// find its rows along dim 0.
inline at::Tensor empty_in_layout(const at::Tensor& first, const at::TensorOptions& options, bool contiguous = false) {
  return contiguous ? at::empty(first.sizes(), options) : at::empty_like(first, options);
}

// x read in `out`'s layout: x itself when it has out's strides (no pass over memory), else a copy.
inline at::Tensor in_layout(const at::Tensor& x, const at::Tensor& out) {
  return x.strides() == out.strides() ? x : at::empty_like(out, x.options()).copy_(x);
}
}  // namespace dg
