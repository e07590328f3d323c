// The schemas of the kernel ops (csrc/ops.cpp), shared by every namespace that registers them.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

namespace dg {
void define_ops(torch::Library& m);

// dropgrad_step's batch argument, as every C++ kernel reads it: refuses a negative batch and a
// param without the batch along dim 0; returns the span of one list, the stream distance from
// list b to list b + 1 (0 when batch is 0: one list).
int64_t batch_list_span(at::TensorList params, int64_t batch);
}  // namespace dg
