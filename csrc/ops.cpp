// Schemas of the dropgrad:: ops, written once (define_ops; the emulated CUDA kernels register the
// same ops as dropgrad_emulated::); kernels register per dispatch key in csrc/cpu and csrc/cuda,
// autograd in csrc/autograd.cpp, batching rules in csrc/batching.cpp (philox4x32_10's and
// cuda_rng_state's in dropgrad_cuda/_batching.py), fake (meta) implementations in _autograd.py.
// mode: 0 none, 1 bernoulli, 2 gaussian, 3 normal (raw N(0,1), the meta-dropout epsilon).
// rng_state: an int64 tensor [seed, offset] on the op's device that, when given, replaces the
// seed argument and adds its offset to the offset argument, read when the kernel runs;
// cuda_rng_state fills one from torch's CUDA generator on the device, so a captured CUDA graph
// draws fresh noise on every replay, and backward reuses the state of its forward.
#include <Python.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <limits>
#include <mutex>

#include "autograd.h"
#include "dropgrad_math.h"
#include "ops.h"

namespace {
// _C.draw_seed(): a seed in [0, 2**63 - 1) from torch's default CPU generator, the number
// torch.randint(0, 2**63 - 1, ()) would draw (random64 modulo the range, as ATen's random_), at
// the cost of a C call: no tensor, no dispatch, and nothing a torch.func transform could batch.
PyObject* draw_seed(PyObject*, PyObject*) {
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  uint64_t r;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    r = gen->random64();
  }
  return PyLong_FromUnsignedLongLong(r % ((uint64_t(1) << 63) - 1));
}

// _C.cpu_isa([name]): the instruction set the CPU kernels run with, after setting it to `name` if
// given; ValueError for one this CPU does not run. _C.cpu_isas(): those it runs, slowest first.
PyObject* cpu_isa(PyObject*, PyObject* args) {
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "|s", &name)) return nullptr;
  if (name != nullptr && !dg::set_cpu_isa(name)) {
    PyErr_Format(PyExc_ValueError, "cpu_isa: this CPU does not run %s (it runs the first %d of default, avx2, avx512)",
                 name, dg::cpu_isas());
    return nullptr;
  }
  return PyUnicode_FromString(dg::cpu_isa());
}

PyObject* cpu_isas(PyObject*, PyObject*) {
  const char* names[] = {"default", "avx2", "avx512"};
  PyObject* out = PyTuple_New(dg::cpu_isas());
  for (int i = 0; i < dg::cpu_isas(); ++i) PyTuple_SET_ITEM(out, i, PyUnicode_FromString(names[i]));
  return out;
}

// _C.check_stream_args(p, mode, offset, span): dg::check_stream_args for the Python namespaces.
PyObject* check_stream_args(PyObject*, PyObject* args) {
  double p;
  long long mode, offset, span;
  if (!PyArg_ParseTuple(args, "dLLL", &p, &mode, &offset, &span)) return nullptr;
  try {
    dg::check_stream_args(p, mode, offset, span);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"check_stream_args", check_stream_args, METH_VARARGS, "Checks an op's p, mode and offset as every kernel does."},
    {"draw_seed", draw_seed, METH_NOARGS, "A seed from torch's default generator, as torch.randint(0, 2**63 - 1, ())."},
    {"cpu_isa", cpu_isa, METH_VARARGS, "The CPU kernels' instruction set, after setting it to the given one."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "The CPU kernels' instruction sets this CPU runs, slowest first."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// Importing dropgrad_cuda._C loads this library and so runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
  // batch > 0: params[k] and grads[k] hold `batch` lists' k-th tensors along dim 0, and list b's
  // stream starts at offset + b * (the span of one list): one call equals `batch` calls at those
  // offsets (vmap's randomness="different", docs/noise_contract.md). lrs[k] is then 0-d, of
  // params[k]'s shape, or of one list's tensor shape (params[k].shape[1:], shared by the lists).
  m.def(
      "dropgrad_step(Tensor[] params, Tensor[] grads, Tensor[] lrs, float lr, float p, int mode, "
      "int seed, int offset, Tensor? rng_state=None, int batch=0) -> Tensor[]");
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

void dg::check_stream_args(double p, int64_t mode, int64_t offset, int64_t span) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "p must be in [0, 1), got ", p);
  TORCH_CHECK_VALUE(mode >= kNone && mode <= kNormal, "mode must be 0 (none), 1 (bernoulli), 2 (gaussian) or 3 (normal), got ",
                    mode);
  TORCH_CHECK_VALUE(offset >= 0 && offset % 4 == 0 && offset <= std::numeric_limits<int64_t>::max() - span,
                    "offset must be a non-negative multiple of 4 below 2**63 - numel, got ", offset);
}

int64_t dg::batch_list_span(at::TensorList params, int64_t batch) {
  TORCH_CHECK(batch >= 0, "batch must be non-negative, got ", batch);
  if (batch == 0) return 0;
  int64_t list_span = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    TORCH_CHECK(params[k].dim() > 0 && params[k].size(0) == batch, "params[", k, "] must have the batch of ", batch,
                " lists along dim 0");
    list_span += span(params[k].numel() / batch);
  }
  return list_span;
}

TORCH_LIBRARY(dropgrad, m) {
  dg::define_ops(m);
  m.def("cuda_rng_state(Tensor like, int numel) -> Tensor");
}

// The Triton backend's ops: the same schemas, kernels registered from Python (triton_kernels/ops.py).
TORCH_LIBRARY(dropgrad_triton, m) { dg::define_ops(m); }
