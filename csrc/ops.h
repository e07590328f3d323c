// The schemas of the kernel ops (csrc/ops.cpp), shared by every namespace that registers them.
#pragma once
#include <torch/library.h>

namespace dg {
void define_ops(torch::Library& m);
}
