// Autograd of the kernel ops (csrc/autograd.cpp), registered for each namespace that defines them.
#pragma once
#include <torch/library.h>

#include <cstdint>

namespace dg {

enum Namespace : int { kDropgrad = 0, kEmulated = 1, kTriton = 2 };

// The Autograd kernels of every differentiable op (and dropgrad_step_'s refusal), and
// dropgrad_step_'s ADInplaceOrView kernel (the params' version counters).
void register_autograd(torch::Library& m, Namespace ns);
void register_inplace_or_view(torch::Library& m, Namespace ns);

// The batching rules (FuncTorchBatched kernels) of the noisy ops (csrc/batching.cpp).
void register_batching(torch::Library& m, Namespace ns);

// Inside a backward whose forward did not run under vmap level `level` (the batching rules then
// give every batch element the forward's one noise).
bool regenerating_outside(int64_t level);

}  // namespace dg
