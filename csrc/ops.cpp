// Schemas of the dropgrad:: ops, written once (define_ops; the emulated CUDA kernels register the
// same ops as dropgrad_emulated::); kernels register per dispatch key in csrc/cpu and csrc/cuda,
// autograd and fake (meta) implementations in dropgrad_cuda/_autograd.py.
// mode: 0 none, 1 bernoulli, 2 gaussian, 3 normal (raw N(0,1), the meta-dropout epsilon).
// rng_state: an int64 tensor [seed, offset] on the op's device that, when given, replaces the
// seed argument and adds its offset to the offset argument, read when the kernel runs;
// cuda_rng_state fills one from torch's CUDA generator on the device, so a captured CUDA graph
// draws fresh noise on every replay, and backward reuses the state of its forward.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// Importing dropgrad_cuda._C loads this library and so runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

void dg::define_ops(torch::Library& m) {
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");
  m.def("noise(Tensor like, float p, int mode, int seed, int offset, Tensor? rng_state=None) -> Tensor");
  m.def("drop_grad(Tensor grad, float p, int mode, int seed, int offset, Tensor? rng_state=None) -> Tensor");
  m.def(
      "dropgrad_update(Tensor param, Tensor grad, Tensor? lr_tensor, float lr, float p, int mode, "
      "int seed, int offset, Tensor? rng_state=None) -> Tensor");
  m.def(
      "dropgrad_step(Tensor[] params, Tensor[] grads, Tensor[] lrs, float lr, float p, int mode, "
      "int seed, int offset, Tensor? rng_state=None) -> Tensor[]");
  // In place, for optimizers: params -= lr * ((grads + weight_decay * params) * n). Not differentiable.
  // noise_mode, not mode: torch.compile passes a mutating op's arguments by name to a function
  // whose own first parameter is `mode` (auto_functionalized).
  m.def(
      "dropgrad_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[] lrs, float lr, float weight_decay, float p, "
      "int noise_mode, int seed, int offset, Tensor? rng_state=None) -> ()");
  m.def(
      "meta_dropout(Tensor f, Tensor a, bool deterministic, int seed, int offset, Tensor? rng_state=None) -> Tensor");
  m.def(
      "meta_dropout_backward(Tensor grad_out, Tensor f, Tensor a, bool deterministic, int seed, "
      "int offset, Tensor? rng_state=None) -> (Tensor, Tensor)");
  // meta_dropout_backward's own derivative along (grad_grad_f, grad_grad_a), for second-order MAML:
  // (d grad_out, d f, d a), eps regenerated.
  m.def(
      "meta_dropout_double_backward(Tensor grad_grad_f, Tensor grad_grad_a, Tensor grad_out, Tensor f, Tensor a, "
      "bool deterministic, int seed, int offset, Tensor? rng_state=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY(dropgrad, m) {
  dg::define_ops(m);
  m.def("cuda_rng_state(Tensor like, int numel) -> Tensor");
}
