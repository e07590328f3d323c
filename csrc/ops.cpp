// Schemas of the dropgrad:: ops, written once (op_schemas; define_ops defines them for every
// namespace: dropgrad, dropgrad_emulated, dropgrad_triton); kernels register per dispatch key in
// csrc/cpu and csrc/cuda, autograd in csrc/autograd.cpp, batching rules in csrc/batching.cpp
// (philox4x32_10's and cuda_rng_state's in dropgrad_cuda/_batching.py), fake (meta)
// implementations in dropgrad_cuda/_fakes.py.
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
#include <string>

#include "namespaces.h"
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

// _C.op_schemas(): the table of ops (dg::op_schemas), from which Python derives its lists of ops.
PyObject* op_schemas(PyObject*, PyObject*) {
  const auto& schemas = dg::op_schemas();
  PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(schemas.size()));
  for (size_t i = 0; i < schemas.size(); ++i) PyTuple_SET_ITEM(out, i, PyUnicode_FromString(schemas[i]));
  return out;
}

PyMethodDef methods[] = {
    {"op_schemas", op_schemas, METH_NOARGS, "The schema of every kernel op, the one table of ops."},
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

// The one table of ops: every namespace defines these schemas, and every other list of ops derives
// from it (the batching rules, csrc/batching.cpp; the public op names, fakes and bytes moved in
// Python, through _C.op_schemas()).
const std::vector<const char*>& dg::op_schemas() {
  static const std::vector<const char*> schemas{
      "philox4x32_10(Tensor counter, Tensor key) -> Tensor",
      "noise(Tensor like, float p, int mode, int seed, int offset, Tensor? rng_state=None) -> Tensor",
      "drop_grad(Tensor grad, float p, int mode, int seed, int offset, Tensor? rng_state=None) -> Tensor",
      "dropgrad_update(Tensor param, Tensor grad, Tensor? lr_tensor, float lr, float p, int mode, "
      "int seed, int offset, Tensor? rng_state=None) -> Tensor",
      // batch > 0: params[k] and grads[k] hold `batch` lists' k-th tensors along dim 0, and list b's
      // stream starts at offset + b * (the span of one list): one call equals `batch` calls at those
      // offsets (vmap's randomness="different", docs/noise_contract.md). lrs[k] is then 0-d, of
      // params[k]'s shape, or of one list's tensor shape (params[k].shape[1:], shared by the lists).
      "dropgrad_step(Tensor[] params, Tensor[] grads, Tensor[] lrs, float lr, float p, int mode, "
      "int seed, int offset, Tensor? rng_state=None, int batch=0) -> Tensor[]",
      // In place, for optimizers: params -= lr * ((grads + weight_decay * params) * n). Not
      // differentiable. noise_mode, not mode: torch.compile passes a mutating op's arguments by name
      // to a function whose own first parameter is `mode` (auto_functionalized).
      "dropgrad_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[] lrs, float lr, float weight_decay, float p, "
      "int noise_mode, int seed, int offset, Tensor? rng_state=None) -> ()",
      "meta_dropout(Tensor f, Tensor a, bool deterministic, int seed, int offset, Tensor? rng_state=None) -> Tensor",
      "meta_dropout_backward(Tensor grad_out, Tensor f, Tensor a, bool deterministic, int seed, "
      "int offset, Tensor? rng_state=None) -> (Tensor, Tensor)",
      // meta_dropout_backward's own derivative along (grad_grad_f, grad_grad_a), for second-order
      // MAML: (d grad_out, d f, d a), eps regenerated.
      "meta_dropout_double_backward(Tensor grad_grad_f, Tensor grad_grad_a, Tensor grad_out, Tensor f, Tensor a, "
      "bool deterministic, int seed, int offset, Tensor? rng_state=None) -> (Tensor, Tensor, Tensor)"};
  return schemas;
}

void dg::define_ops(torch::Library& m) {
  for (const char* schema : op_schemas()) m.def(schema);
}

void dg::check_stream_args(double p, int64_t mode, int64_t offset, int64_t span) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "p must be in [0, 1), got ", p);
  TORCH_CHECK_VALUE(mode >= kNone && mode <= kNormal, "mode must be 0 (none), 1 (bernoulli), 2 (gaussian) or 3 (normal), got ",
                    mode);
  TORCH_CHECK_VALUE(offset >= 0 && offset % 4 == 0 && offset <= std::numeric_limits<int64_t>::max() - span,
                    "offset must be a non-negative multiple of 4 below 2**63 - numel, got ", offset);
}

namespace {
std::string py_dtype(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

std::string py_shape(at::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + (sizes.size() == 1 ? ",)" : ")");
}
}  // namespace

void dg::check_float(const at::Tensor& t, const std::string& name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble, name,
                   " must be float16, bfloat16, float32 or float64, got ", py_dtype(st));
}

void dg::check_pair(const at::Tensor& a, const at::Tensor& b, const std::string& an, const std::string& bn) {
  check_float(a, an);
  check_float(b, bn);
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), bn, " must have ", an, "'s shape ", py_shape(a.sizes()), ", got ",
                    py_shape(b.sizes()));
  TORCH_CHECK_TYPE(b.scalar_type() == a.scalar_type(), bn, " must have ", an, "'s dtype ", py_dtype(a.scalar_type()),
                   ", got ", py_dtype(b.scalar_type()));
  TORCH_CHECK_VALUE(b.device() == a.device(), bn, " is on ", b.device().str(), " but ", an, " is on ",
                    a.device().str());
}

void dg::check_lr(const at::Tensor& lr, const at::Tensor& param, const std::string& name) {
  TORCH_CHECK_TYPE(at::isFloatingType(lr.scalar_type()), name, " must be a floating-point tensor, got ",
                   py_dtype(lr.scalar_type()));
  TORCH_CHECK_VALUE(lr.device() == param.device(), name, " is on ", lr.device().str(), " but param is on ",
                    param.device().str());
  if (lr.dim() == 0) return;
  TORCH_CHECK_VALUE(lr.sizes() == param.sizes(), name, " must be 0-d or have param's shape ", py_shape(param.sizes()),
                    ", got ", py_shape(lr.sizes()));
  TORCH_CHECK_TYPE(lr.scalar_type() == param.scalar_type(), "a full-shape ", name, " must have param's dtype ",
                   py_dtype(param.scalar_type()), ", got ", py_dtype(lr.scalar_type()));
}

void dg::check_lists(at::TensorList params, at::TensorList grads, at::TensorList lrs, int64_t batch) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "params and grads must have the same length, got ", params.size(),
                    " and ", grads.size());
  TORCH_CHECK_VALUE(lrs.empty() || lrs.size() == params.size(), "lr must have one entry per param (", params.size(),
                    "), got ", lrs.size());
  TORCH_CHECK_VALUE(batch >= 0, "batch must be non-negative, got ", batch);
  for (size_t k = 0; k < params.size(); ++k) {
    const std::string i = "[" + std::to_string(k) + "]";
    check_pair(params[k], grads[k], "params" + i, "grads" + i);
    TORCH_CHECK_VALUE(params[k].device() == params[0].device(), "params", i, " is on ", params[k].device().str(),
                      " but params[0] is on ", params[0].device().str());
    TORCH_CHECK_VALUE(batch == 0 || (params[k].dim() > 0 && params[k].size(0) == batch), "params", i,
                      " must have the batch of ", batch, " lists along dim 0");
    if (lrs.empty()) continue;
    // Not lr_form's kShared, which a one-element lr of one list's shape never is (a kScalar).
    const bool one_list = batch > 0 && lrs[k].dim() > 0 && lrs[k].sizes() == params[k].sizes().slice(1);
    check_lr(lrs[k], one_list ? params[k].select(0, 0) : params[k], "lr" + i);
  }
}

int64_t dg::batch_list_span(at::TensorList params, int64_t batch) {
  if (batch == 0) return 0;
  int64_t list_span = 0;
  for (const at::Tensor& w : params) list_span += span(w.numel() / batch);
  return list_span;
}

// The checks of csrc/ops.h as ops of their own, for the Python side (dropgrad_cuda/_checks.py: the
// reference's and Triton's namespaces, the public functions), which calls them where its fast test
// finds an argument wrong: they raise what the C++ kernels raise.
TORCH_LIBRARY(dropgrad_checks, m) {
  m.def("stream(float p, int mode, int offset, int span) -> ()", &dg::check_stream_args);
  m.def("dtype(Tensor t, str name) -> ()", [](const at::Tensor& t, std::string name) { dg::check_float(t, name); });
  m.def("pair(Tensor a, Tensor b, str a_name, str b_name) -> ()",
        [](const at::Tensor& a, const at::Tensor& b, std::string an, std::string bn) { dg::check_pair(a, b, an, bn); });
  m.def("lr(Tensor lr, Tensor param, str name) -> ()",
        [](const at::Tensor& lr, const at::Tensor& param, std::string name) { dg::check_lr(lr, param, name); });
  m.def("lists(Tensor[] params, Tensor[] grads, Tensor[] lrs, int batch) -> ()", &dg::check_lists);
}

TORCH_LIBRARY(dropgrad, m) {
  dg::define_ops(m);
  m.def("cuda_rng_state(Tensor like, int numel) -> Tensor");
}

// The Triton backend's ops: the same schemas, kernels registered from Python (triton_kernels/ops.py).
TORCH_LIBRARY(dropgrad_triton, m) { dg::define_ops(m); }
