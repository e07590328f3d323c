// Autograd of the dropgrad ops under the Autograd dispatch key, written once for every namespace of
// kernels (dropgrad: the CPU and CUDA kernels; dropgrad_emulated; dropgrad_triton).
//
// A forward saves its inputs and its stream's (seed, offset), never the noise; its backward is a
// graph node that calls the same namespace's ops through the dispatcher, so the noise is
// regenerated and every derivative is itself differentiable (second-order MAML; the third order of
// meta_dropout is composite). The nodes are hand-written Node subclasses, as PyTorch's generated
// VariableType kernels are: those run at every torch.func level (grad, vjp, jacrev, grad of grad,
// vmap of grad), where torch::autograd::Function is refused, and they cost what a native op's
// autograd costs (the Python autograd layer they replace cost 2-3x the eager ops' host time).
#include "namespaces.h"

#include <ATen/ATen.h>
#include <ATen/functorch/DynamicLayer.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>

#include "dropgrad_math.h"

namespace dg {
namespace {

// The ops the backwards call (op<N, Op>(), csrc/namespaces.h): names and C++ signatures.
struct DropGradOp {
  static constexpr const char* name = "drop_grad";
  using Sig = Tensor(const Tensor&, double, int64_t, int64_t, int64_t, const OptTensor&);
};
struct NoiseOp {
  static constexpr const char* name = "noise";
  using Sig = DropGradOp::Sig;
};
struct UpdateOp {
  static constexpr const char* name = "dropgrad_update";
  using Sig = Tensor(const Tensor&, const Tensor&, const OptTensor&, double, double, int64_t, int64_t, int64_t,
                     const OptTensor&);
};
struct StepInPlaceOp {
  static constexpr const char* name = "dropgrad_step_";
  using Sig = void(at::TensorList, at::TensorList, at::TensorList, double, double, double, int64_t, int64_t, int64_t,
                   const OptTensor&);
};
struct MetaDropoutOp {
  static constexpr const char* name = "meta_dropout";
  using Sig = Tensor(const Tensor&, const Tensor&, bool, int64_t, int64_t, const OptTensor&);
};
struct MetaDropoutBackwardOp {
  static constexpr const char* name = "meta_dropout_backward";
  using Sig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool, int64_t, int64_t,
                                         const OptTensor&);
};
struct MetaDropoutDoubleBackwardOp {
  static constexpr const char* name = "meta_dropout_double_backward";
  using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                 const Tensor&, bool, int64_t, int64_t, const OptTensor&);
};

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// ---- vmap: a backward regenerates its forward's noise. At a vmap level its forward did not run
// under (jacrev's vmap over cotangents, a user's vmap of a vjp), every batch element gets that
// one noise; the batching rules (csrc/batching.cpp) ask regenerating_outside(level).
thread_local const std::vector<int64_t>* regenerating_levels = nullptr;

std::vector<int64_t> vmap_levels() {
  std::vector<int64_t> out;
  for (const auto& layer : at::functorch::getDynamicLayerStack()) {
    if (layer.key() == at::functorch::TransformType::Vmap) out.push_back(layer.layerId());
  }
  return out;
}

struct Regenerating {
  const std::vector<int64_t>* before;
  explicit Regenerating(const std::vector<int64_t>& levels) : before(regenerating_levels) {
    regenerating_levels = &levels;
  }
  ~Regenerating() { regenerating_levels = before; }
};

// ---- memory layouts: an op's noise follows memory position in its output's layout
// (docs/noise_contract.md). A node keeps that layout as its dims from outermost to innermost
// (empty: contiguous) and reads cotangents and saved grads in it, so backward regenerates each
// element's own noise whatever layout autograd hands it. permute and contiguous are out of place,
// so this runs at every torch.func level; a tensor already in the layout is not copied.
std::vector<int64_t> dim_order(const Tensor& out) {
  if (out.is_contiguous()) return {};
  std::vector<int64_t> order(out.dim());
  std::iota(order.begin(), order.end(), 0);
  const auto strides = out.strides();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return strides[a] > strides[b]; });
  return order;
}

Tensor in_order(const Tensor& t, const std::vector<int64_t>& order) {
  if (order.empty()) return t.contiguous();
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  return t.permute(order).contiguous().permute(inverse);
}

// What every node keeps: the stream, the vmap levels of its forward, and saved tensors.
struct StreamNode : torch::autograd::Node {
  int64_t seed = 0, offset = 0;
  SavedVariable rng_state;
  std::vector<int64_t> levels = vmap_levels();

  OptTensor rng() {  // nullopt when the forward had none
    Tensor t = rng_state.unpack();
    return t.defined() ? OptTensor(std::move(t)) : std::nullopt;
  }
  void release_variables() override { rng_state.reset_data(); }
};

SavedVariable save(const OptTensor& t) { return SavedVariable(t.has_value() ? *t : Tensor(), false); }

// The gradient of an lr from the full-shape product g: a 0-d lr's is the sum, a full-shape lr's g
// itself, and one list's lr shared by a batch of lists (dropgrad_step's batch) the sum over lists.
Tensor reduce_like(const Tensor& g, const Tensor& like) {
  if (g.sym_sizes() == like.sym_sizes()) return g.to(like.scalar_type());
  if (like.sym_numel() == 1) return g.sum().reshape_symint(like.sym_sizes()).to(like.scalar_type());
  return g.sum(0).to(like.scalar_type());
}

// Graph nodes are held by std::shared_ptr in torch 2.11 and by c10::intrusive_ptr in 2.14 (the
// supported range spans the change).
using NodePtr = decltype(torch::autograd::Edge::function);

template <class NodeT>
auto make_node(torch::autograd::edge_list&& edges) {
  auto node = [] {
    if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
      return std::make_shared<NodeT>();
    } else {
      return c10::make_intrusive<NodeT>();
    }
  }();
  node->set_next_edges(std::move(edges));
  return node;
}

// ---------------------------------------------------------------- drop_grad: linear in grad
template <Namespace N>
struct DropGradBackward : StreamNode {
  double p = 0;
  int64_t mode = 0;
  std::vector<int64_t> order;  // the forward output's layout
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    variable_list out(1);
    if (g[0].defined() && should_compute_output(0)) {
      out[0] = op<N, DropGradOp>().call(in_order(g[0], order), p, mode, seed, offset, rng());
    }
    return out;
  }
  std::string name() const override { return "DropGradBackward"; }
};

template <Namespace N>
Tensor drop_grad(c10::DispatchKeySet ks, const Tensor& grad, double p, int64_t mode, int64_t seed, int64_t offset,
                 const OptTensor& rng_state) {
  Tensor out;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    out = op<N, DropGradOp>().redispatch(ks & c10::after_autograd_keyset, grad, p, mode, seed, offset, rng_state);
  }
  if (torch::autograd::compute_requires_grad(grad)) {
    auto node = make_node<DropGradBackward<N>>(torch::autograd::collect_next_edges(grad));
    node->p = p, node->mode = mode, node->seed = seed, node->offset = offset, node->rng_state = save(rng_state);
    node->order = dim_order(out);
    torch::autograd::set_history(out, node);
  }
  return out;
}

// ---------------------------------------------------------------- dropgrad_update and dropgrad_step
// d/dparam = 1, d/dgrad = -lr * n, d/dlr = -(grad * n): each tensor on its slice of the stream.
struct UpdateGrads {
  Tensor param, grad, lr;
};

template <Namespace N>
UpdateGrads update_grads(const Tensor& gout, const Tensor& grad, const Tensor& lr_tensor, double lr, double p,
                         int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng, bool need_param,
                         bool need_grad, bool need_lr, const std::vector<int64_t>& order) {
  UpdateGrads d;
  if (need_param) d.param = gout;
  if (need_grad) {
    const Tensor n_gout = op<N, DropGradOp>().call(in_order(gout, order), p, mode, seed, offset, rng);
    d.grad = lr_tensor.defined() ? n_gout * lr_tensor.neg() : n_gout * -lr;
  }
  if (need_lr && lr_tensor.defined()) {
    d.lr = reduce_like((op<N, DropGradOp>().call(in_order(grad, order), p, mode, seed, offset, rng) * gout).neg(),
                       lr_tensor);
  }
  return d;
}

template <Namespace N>
struct UpdateBackward : StreamNode {
  double lr = 0, p = 0;
  int64_t mode = 0;
  SavedVariable grad, lr_tensor;  // grad only when the lr gradient needs it
  std::vector<int64_t> order;     // the forward output's layout
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    variable_list out(3);
    if (!g[0].defined()) return out;
    const auto d = update_grads<N>(g[0], grad.unpack(), lr_tensor.unpack(), lr, p, mode, seed, offset, rng(),
                                   should_compute_output(0), should_compute_output(1), should_compute_output(2), order);
    out[0] = d.param, out[1] = d.grad, out[2] = d.lr;
    return out;
  }
  void release_variables() override {
    StreamNode::release_variables();
    grad.reset_data();
    lr_tensor.reset_data();
  }
  std::string name() const override { return "DropgradUpdateBackward"; }
};

template <Namespace N>
Tensor dropgrad_update(c10::DispatchKeySet ks, const Tensor& param, const Tensor& grad, const OptTensor& lr_tensor,
                       double lr, double p, int64_t mode, int64_t seed, int64_t offset, const OptTensor& rng_state) {
  Tensor out;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    out = op<N, UpdateOp>().redispatch(ks & c10::after_autograd_keyset, param, grad, lr_tensor, lr, p, mode, seed,
                                       offset, rng_state);
  }
  const Tensor lr_t = lr_tensor.has_value() ? *lr_tensor : Tensor();
  if (torch::autograd::compute_requires_grad(param, grad, lr_t)) {
    auto node = make_node<UpdateBackward<N>>(torch::autograd::collect_next_edges(param, grad, lr_t));
    node->lr = lr, node->p = p, node->mode = mode, node->seed = seed, node->offset = offset;
    node->rng_state = save(rng_state);
    node->lr_tensor = SavedVariable(lr_t, false);
    if (lr_t.defined() && lr_t.requires_grad()) node->grad = SavedVariable(grad, false);
    node->order = dim_order(out);
    torch::autograd::set_history(out, node);
  }
  return out;
}

// The list's backward in two list calls, so that its noise is the forward's wherever a tensor's
// stream starts (a batch of lists, or the rows a vmap over this backward adds): n * v for every
// tensor v of a list is dropgrad_step of zeros with lr = -1 (0 - (-1) * (v * n), the same
// rounding as drop_grad's v * n), as logit_noise adds its noise.
template <Namespace N>
struct StepBackward : StreamNode {
  double lr = 0, p = 0;
  int64_t mode = 0, batch = 0;
  std::vector<std::vector<c10::SymInt>> sizes;  // symbolic under torch.compile's dynamic shapes
  std::vector<at::TensorOptions> options;
  std::vector<SavedVariable> grads, lrs;  // grads only when an lr gradient needs them; lrs when given
  std::vector<std::vector<int64_t>> orders;  // the forward outputs' layouts

  std::vector<Tensor> noisy(const std::vector<Tensor>& vs, const OptTensor& state) {
    std::vector<Tensor> laid, zeros;
    for (size_t k = 0; k < vs.size(); ++k) {
      laid.push_back(in_order(vs[k], orders[k]));
      zeros.push_back(at::zeros_like(laid.back()));
    }
    return op<N, StepOp>().call(zeros, laid, {}, -1.0, p, mode, seed, offset, state, batch);
  }
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    const size_t n = sizes.size(), m = lrs.size();
    variable_list out(2 * n + m);
    bool need_grad = false, need_lr = false;
    for (size_t k = 0; k < n; ++k) {
      if (!g[k].defined()) continue;  // this output took no part in the loss
      if (should_compute_output(k)) out[k] = g[k];
      need_grad = need_grad || should_compute_output(n + k);
      need_lr = need_lr || (m && should_compute_output(2 * n + k));
    }
    const OptTensor state = rng();
    if (need_grad) {
      std::vector<Tensor> gouts(n);
      for (size_t k = 0; k < n; ++k) gouts[k] = g[k].defined() ? g[k] : at::zeros_symint(sizes[k], options[k]);
      const std::vector<Tensor> ng = noisy(gouts, state);
      for (size_t k = 0; k < n; ++k) {
        if (g[k].defined() && should_compute_output(n + k)) out[n + k] = m ? ng[k] * lrs[k].unpack().neg() : ng[k] * -lr;
      }
    }
    if (need_lr) {
      std::vector<Tensor> saved(n);
      for (size_t k = 0; k < n; ++k) saved[k] = grads[k].unpack();
      const std::vector<Tensor> ng = noisy(saved, state);
      for (size_t k = 0; k < n; ++k) {
        if (g[k].defined() && should_compute_output(2 * n + k)) {
          out[2 * n + k] = reduce_like((ng[k] * g[k]).neg(), lrs[k].unpack());
        }
      }
    }
    return out;
  }
  void release_variables() override {
    StreamNode::release_variables();
    for (auto& v : grads) v.reset_data();
    for (auto& v : lrs) v.reset_data();
  }
  std::string name() const override { return "DropgradStepBackward"; }
};

template <Namespace N>
std::vector<Tensor> dropgrad_step(c10::DispatchKeySet ks, at::TensorList params, at::TensorList grads,
                                  at::TensorList lrs, double lr, double p, int64_t mode, int64_t seed, int64_t offset,
                                  const OptTensor& rng_state, int64_t batch) {
  std::vector<Tensor> outs;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    outs = op<N, StepOp>().redispatch(ks & c10::after_autograd_keyset, params, grads, lrs, lr, p, mode, seed, offset,
                                      rng_state, batch);
  }
  if (torch::autograd::compute_requires_grad(params, grads, lrs)) {
    auto node = make_node<StepBackward<N>>(torch::autograd::collect_next_edges(params, grads, lrs));
    node->lr = lr, node->p = p, node->mode = mode, node->seed = seed, node->offset = offset, node->batch = batch;
    node->rng_state = save(rng_state);
    const bool lr_needs = std::any_of(lrs.begin(), lrs.end(), [](const Tensor& l) { return l.requires_grad(); });
    for (size_t k = 0; k < params.size(); ++k) {
      node->sizes.push_back(params[k].sym_sizes().vec());
      node->options.push_back(params[k].options());
      node->orders.push_back(dim_order(outs[k]));
      if (lr_needs) node->grads.emplace_back(grads[k], false);
    }
    for (const Tensor& l : lrs) node->lrs.emplace_back(l, false);
    torch::autograd::set_history(outs, node);
  }
  return outs;
}

// ---------------------------------------------------------------- dropgrad_step_: in place, not
// differentiable. Refused where autograd would need its derivative; the version counters of the
// params are bumped (a saved param goes stale), which the dispatcher does not do for a custom op.
template <Namespace N>
void dropgrad_step_(c10::DispatchKeySet ks, at::TensorList params, at::TensorList grads, at::TensorList lrs,
                    double lr, double weight_decay, double p, int64_t mode, int64_t seed, int64_t offset,
                    const OptTensor& rng_state) {
  TORCH_CHECK(!torch::autograd::compute_requires_grad(params),
              "dropgrad_step_ updates params in place and is not differentiable: call it under torch.no_grad() (as "
              "an optimizer step does), or use dropgrad_step for new tensors");
  const at::AutoDispatchBelowAutograd guard;
  op<N, StepInPlaceOp>().redispatch(ks & c10::after_autograd_keyset, params, grads, lrs, lr, weight_decay, p, mode,
                                    seed, offset, rng_state);
}

template <Namespace N>
void dropgrad_step_version(c10::DispatchKeySet ks, at::TensorList params, at::TensorList grads, at::TensorList lrs,
                           double lr, double weight_decay, double p, int64_t mode, int64_t seed, int64_t offset,
                           const OptTensor& rng_state) {
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op<N, StepInPlaceOp>().redispatch(ks & c10::after_ADInplaceOrView_keyset, params, grads, lrs, lr, weight_decay,
                                      p, mode, seed, offset, rng_state);
  }
  for (const Tensor& w : params) torch::autograd::impl::bump_version(w);
}

// ---------------------------------------------------------------- meta_dropout: its backward and
// that backward's derivative are fused ops that regenerate eps; the third order is composite.
template <Namespace N>
struct MetaDropoutBackward : StreamNode {
  bool deterministic = false;
  SavedVariable f, a;
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    if (!g[0].defined()) return variable_list(2);
    auto [gf, ga] = op<N, MetaDropoutBackwardOp>().call(g[0], f.unpack(), a.unpack(), deterministic, seed, offset,
                                                        rng());
    return {gf, ga};
  }
  void release_variables() override {
    StreamNode::release_variables();
    f.reset_data();
    a.reset_data();
  }
  std::string name() const override { return "MetaDropoutBackward"; }
};

template <Namespace N>
Tensor meta_dropout(c10::DispatchKeySet ks, const Tensor& f, const Tensor& a, bool deterministic, int64_t seed,
                    int64_t offset, const OptTensor& rng_state) {
  Tensor out;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    out = op<N, MetaDropoutOp>().redispatch(ks & c10::after_autograd_keyset, f, a, deterministic, seed, offset,
                                            rng_state);
  }
  if (torch::autograd::compute_requires_grad(f, a)) {
    auto node = make_node<MetaDropoutBackward<N>>(torch::autograd::collect_next_edges(f, a));
    node->deterministic = deterministic, node->seed = seed, node->offset = offset, node->rng_state = save(rng_state);
    node->f = SavedVariable(f, false), node->a = SavedVariable(a, false);
    torch::autograd::set_history(out, node);
  }
  return out;
}

template <Namespace N>
struct MetaDropoutBackwardBackward : StreamNode {
  bool deterministic = false;
  SavedVariable gout, f, a;
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    const Tensor fv = f.unpack();
    auto zero_if_undefined = [&](const Tensor& t) { return t.defined() ? t : at::zeros_like(fv); };  // not in the loss
    auto [d_gout, d_f, d_a] = op<N, MetaDropoutDoubleBackwardOp>().call(
        zero_if_undefined(g[0]), zero_if_undefined(g[1]), gout.unpack(), fv, a.unpack(), deterministic, seed, offset,
        rng());
    return {d_gout, d_f, d_a};
  }
  void release_variables() override {
    StreamNode::release_variables();
    gout.reset_data();
    f.reset_data();
    a.reset_data();
  }
  std::string name() const override { return "MetaDropoutBackwardBackward"; }
};

template <Namespace N>
std::tuple<Tensor, Tensor> meta_dropout_backward(c10::DispatchKeySet ks, const Tensor& gout, const Tensor& f,
                                                 const Tensor& a, bool deterministic, int64_t seed, int64_t offset,
                                                 const OptTensor& rng_state) {
  std::tuple<Tensor, Tensor> out;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    out = op<N, MetaDropoutBackwardOp>().redispatch(ks & c10::after_autograd_keyset, gout, f, a, deterministic, seed,
                                                    offset, rng_state);
  }
  if (torch::autograd::compute_requires_grad(gout, f, a)) {
    auto node = make_node<MetaDropoutBackwardBackward<N>>(torch::autograd::collect_next_edges(gout, f, a));
    node->deterministic = deterministic, node->seed = seed, node->offset = offset, node->rng_state = save(rng_state);
    node->gout = SavedVariable(gout, false), node->f = SavedVariable(f, false), node->a = SavedVariable(a, false);
    torch::autograd::set_history(std::vector<Tensor>{std::get<0>(out), std::get<1>(out)}, node);
  }
  return out;
}

// The third order, rarely needed: composite ops on z = a + eps (eps regenerated, materialized only
// here), so every further order is PyTorch's own autograd. With s = softplus'(z) and its
// derivatives ds, dds, the double backward is D_gout = ggf sp + gga f s, D_f = gga gout s,
// D_a = ggf gout s + gga gout f ds; (u, v, w) are the cotangents of (D_gout, D_f, D_a).
template <Namespace N>
struct MetaDropoutDoubleBackwardBackward : StreamNode {
  bool deterministic = false;
  SavedVariable ggf, gga, gout, f, a;
  variable_list apply(variable_list&& g) override {
    const Regenerating r(levels);
    const Tensor ggf_ = ggf.unpack(), gga_ = gga.unpack(), gout_ = gout.unpack(), f_ = f.unpack(), a_ = a.unpack();
    const Tensor z =
        deterministic ? a_
                      : a_ + op<N, NoiseOp>().call(a_.detach(), 0.0, kNormal, seed, offset, rng()).to(a_.scalar_type());
    // softplus' as PyTorch's (threshold 20); its derivatives ds = e / (1 + e)^2, e = exp(-|z|), and
    // dds = ds (1 - 2 s) = -ds tanh(z / 2): forms that do not cancel where s rounds to 1 (as
    // dropgrad_math.h and reference.py write them).
    const Tensor above = z > 20;
    const Tensor e = at::exp(z.abs().neg());
    const Tensor s = at::where(above, at::ones_like(z), at::sigmoid(z));
    const Tensor ds = at::where(above, at::zeros_like(z), e / ((e + 1) * (e + 1)));
    const Tensor dds = at::where(above, at::zeros_like(z), ds.neg() * at::tanh(z / 2));
    auto zero_if_undefined = [&](const Tensor& t) { return t.defined() ? t : at::zeros_like(f_); };
    const Tensor u = zero_if_undefined(g[0]), v = zero_if_undefined(g[1]), w = zero_if_undefined(g[2]);
    return {u * at::softplus(z, 1, 20) + w * gout_ * s,
            u * f_ * s + v * gout_ * s + w * gout_ * f_ * ds,
            v * gga_ * s + w * (ggf_ * s + gga_ * f_ * ds),
            u * gga_ * s + w * gga_ * gout_ * ds,
            u * (ggf_ * s + gga_ * f_ * ds) + v * gga_ * gout_ * ds +
                w * (ggf_ * gout_ * ds + gga_ * gout_ * f_ * dds)};
  }
  void release_variables() override {
    StreamNode::release_variables();
    for (auto* v : {&ggf, &gga, &gout, &f, &a}) v->reset_data();
  }
  std::string name() const override { return "MetaDropoutDoubleBackwardBackward"; }
};

template <Namespace N>
std::tuple<Tensor, Tensor, Tensor> meta_dropout_double_backward(c10::DispatchKeySet ks, const Tensor& ggf,
                                                                const Tensor& gga, const Tensor& gout, const Tensor& f,
                                                                const Tensor& a, bool deterministic, int64_t seed,
                                                                int64_t offset, const OptTensor& rng_state) {
  std::tuple<Tensor, Tensor, Tensor> out;
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    out = op<N, MetaDropoutDoubleBackwardOp>().redispatch(ks & c10::after_autograd_keyset, ggf, gga, gout, f, a,
                                                          deterministic, seed, offset, rng_state);
  }
  if (torch::autograd::compute_requires_grad(ggf, gga, gout, f, a)) {
    auto node =
        make_node<MetaDropoutDoubleBackwardBackward<N>>(torch::autograd::collect_next_edges(ggf, gga, gout, f, a));
    node->deterministic = deterministic, node->seed = seed, node->offset = offset, node->rng_state = save(rng_state);
    node->ggf = SavedVariable(ggf, false), node->gga = SavedVariable(gga, false);
    node->gout = SavedVariable(gout, false), node->f = SavedVariable(f, false), node->a = SavedVariable(a, false);
    torch::autograd::set_history(std::vector<Tensor>{std::get<0>(out), std::get<1>(out), std::get<2>(out)}, node);
  }
  return out;
}

template <Namespace N>
void autograd_kernels(torch::Library& m) {
  m.impl("drop_grad", TORCH_FN(drop_grad<N>));
  m.impl("dropgrad_update", TORCH_FN(dropgrad_update<N>));
  m.impl("dropgrad_step", TORCH_FN(dropgrad_step<N>));
  m.impl("dropgrad_step_", TORCH_FN(dropgrad_step_<N>));
  m.impl("meta_dropout", TORCH_FN(meta_dropout<N>));
  m.impl("meta_dropout_backward", TORCH_FN(meta_dropout_backward<N>));
  m.impl("meta_dropout_double_backward", TORCH_FN(meta_dropout_double_backward<N>));
}

}  // namespace

void register_autograd(torch::Library& m, Namespace ns) {
  for_namespace(ns, [&](auto n) { autograd_kernels<decltype(n)::value>(m); });
}

void register_inplace_or_view(torch::Library& m, Namespace ns) {
  for_namespace(ns, [&](auto n) { m.impl("dropgrad_step_", TORCH_FN(dropgrad_step_version<decltype(n)::value>)); });
}

bool regenerating_outside(int64_t level) {
  const auto* levels = regenerating_levels;
  return levels != nullptr && std::find(levels->begin(), levels->end(), level) == levels->end();
}

}  // namespace dg

// The C++ kernels' namespace and the Triton backend's (its schemas are csrc/ops.cpp's, its
// kernels Python); the emulated CUDA kernels register theirs in csrc/emulated.
TORCH_LIBRARY_IMPL(dropgrad, Autograd, m) { dg::register_autograd(m, dg::kDropgrad); }
TORCH_LIBRARY_IMPL(dropgrad, ADInplaceOrView, m) { dg::register_inplace_or_view(m, dg::kDropgrad); }
TORCH_LIBRARY_IMPL(dropgrad_triton, Autograd, m) { dg::register_autograd(m, dg::kTriton); }
TORCH_LIBRARY_IMPL(dropgrad_triton, ADInplaceOrView, m) { dg::register_inplace_or_view(m, dg::kTriton); }
