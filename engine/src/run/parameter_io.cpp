// Parameter I/O: inputs and targets in; outputs, parameters and gradients out,
// by PyTorch state_dict name. Shapes are checked before anything is copied.
#include <cstring>
#include <mutex>
#include <vector>

#include "anvil/error.hpp"
#include "engine/src/run/engine_impl.hpp"
#include "engine/src/run/host_memory.hpp"

namespace anvil {

void Engine::Impl::upload_bytes(void* dst, const void* src, size_t bytes) {
#if ANVIL_WITH_CUDA
  if (cuda()) return ctx->copy_to_device(dst, src, bytes);
#endif
  if (bytes > 0) std::memcpy(dst, src, bytes);  // an empty tensor's data may be null
}

void Engine::Impl::download_bytes(void* dst, const void* src, size_t bytes) const {
#if ANVIL_WITH_CUDA
  if (cuda()) return ctx->copy_to_host(dst, src, bytes);
#endif
  if (bytes > 0) std::memcpy(dst, src, bytes);  // an empty tensor's data may be null
}

void Engine::Impl::upload(float* dst, const float* src, size_t count) { upload_bytes(dst, src, count * sizeof(float)); }

void Engine::Impl::download(float* dst, const float* src, size_t count) const {
  download_bytes(dst, src, count * sizeof(float));
}

void Engine::Impl::synchronize() {
#if ANVIL_WITH_CUDA
  if (cuda()) ctx->synchronize();
#endif
}

namespace {
// Host tensors of these shapes for a copy the caller asked for (`what`): refused where they would
// not fit, rather than left to the OOM killer once their pages are touched; made (zeroed, so
// written) in the host-memory turn, so that another rank's check sees them. A copy under
// kUncheckedHostBytes is made unchecked (every forward() makes one).
std::vector<HostTensor> host_tensors(const std::vector<Shape>& shapes, const std::string& what) {
  size_t bytes = 0;
  for (const Shape& shape : shapes) bytes += size_t(numel(shape)) * sizeof(float);
  std::unique_lock<std::mutex> lock(host_memory_turn(), std::defer_lock);
  if (bytes >= kUncheckedHostBytes) {
    lock.lock();
    if (const auto why = beyond_host_memory(bytes)) throw Error("out of host memory: " + what + " takes " + *why);
  }
  std::vector<HostTensor> tensors;
  tensors.reserve(shapes.size());
  for (const Shape& shape : shapes) tensors.emplace_back(shape);
  return tensors;
}
}  // namespace

std::map<std::string, HostTensor> Engine::Impl::read_slab(const float* slab, const std::string& what) const {
  std::vector<Shape> shapes;
  for (const auto& slot : schedule.params) shapes.push_back(slot.spec.shape);
  std::vector<HostTensor> copies = host_tensors(shapes, what);
  std::map<std::string, HostTensor> out;
  for (size_t k = 0; k < copies.size(); ++k) {
    const auto& slot = schedule.params[k];
    download(copies[k].data.data(), slab + slot.offset / sizeof(float), copies[k].data.size());
    out[slot.spec.name] = std::move(copies[k]);
  }
  return out;
}

void Engine::Impl::write_slab(float* slab, const std::map<std::string, HostTensor>& tensors) {
  for (const auto& slot : schedule.params) {
    const HostTensor& t = tensors.at(slot.spec.name);
    upload(slab + slot.offset / sizeof(float), t.data.data(), t.data.size());
  }
}

namespace {

void check_memory(const char* what, Memory where, bool cuda) {
  if (where != Memory::Host && where != Memory::Device)
    throw InputError(std::string(what) + ": " + std::to_string(static_cast<int>(where)) + " is not a Memory");
  if (where == Memory::Device && !cuda) throw InputError(std::string(what) + ": a device buffer needs a CUDA engine");
}

void check_buffer(const char* what, const float* data, const Shape& shape, const Shape& want, Memory where, bool cuda) {
  if (shape != want)
    throw InputError(std::string(what) + " has shape " + to_string(shape) + ", the network " +
                     (std::string(what) == "target" ? "outputs " : "expects ") + to_string(want));
  if (data == nullptr) throw InputError(std::string(what) + ": null buffer");
  check_memory(what, where, cuda);
}

void check_holds_shape(const std::string& what, const HostTensor& t) {
  if (!holds_shape(t))
    throw InputError(what + ": " + std::to_string(t.data.size()) + " values for shape " + to_string(t.shape));
}

}  // namespace

void Engine::Impl::copy_in(float* dst, const float* src, size_t count, Memory where) {
#if ANVIL_WITH_CUDA
  if (where == Memory::Device) return ctx->copy_on_device(dst, src, count * sizeof(float));
#endif
  (void)where;
  upload(dst, src, count);
}

void Engine::set_input(const float* data, const Shape& shape, Memory where) {
  require_arena();
  check_buffer("input", data, shape, impl_->graph->tensors[0].shape, where, impl_->cuda());
  impl_->copy_in(impl_->input, data, static_cast<size_t>(numel(shape)), where);
}

void Engine::set_target(const float* data, const Shape& shape, Memory where) {
  require_arena();
  if (!impl_->training()) throw Error("set_target needs an engine built for training (Mode::Train)");
  check_buffer("target", data, shape, impl_->graph->tensors[impl_->graph->output].shape, where, impl_->cuda());
  impl_->copy_in(impl_->target, data, static_cast<size_t>(numel(shape)), where);
}

void Engine::set_input(const HostTensor& x) {
  check_holds_shape("input", x);
  set_input(x.data.data(), x.shape);
}

void Engine::set_target(const HostTensor& t) {
  check_holds_shape("target", t);
  set_target(t.data.data(), t.shape);
}

void Engine::forward_into(float* out, size_t count, Memory where) {
  const auto want = static_cast<size_t>(impl_->output_count());
  if (count != want)
    throw InputError("forward_into: the buffer holds " + std::to_string(count) + " floats, the output has " +
                     std::to_string(want));
  if (out == nullptr) throw InputError("forward_into: null buffer");
  check_memory("forward_into", where, impl_->cuda());
  enqueue_forward();
#if ANVIL_WITH_CUDA
  if (where == Memory::Device) return impl_->ctx->copy_on_device(out, impl_->output, count * sizeof(float));
#endif
  impl_->download(out, impl_->output, count);
}

HostTensor Engine::forward() {
  const Shape& shape = impl_->graph->tensors[impl_->graph->output].shape;
  HostTensor y = std::move(host_tensors({shape}, "a copy of the output")[0]);
  forward_into(y.data.data(), y.data.size());
  return y;
}

float Engine::train_step() {
  enqueue_train_step();
  return last_loss();
}

float Engine::last_loss() const {
  require_arena();
  if (!impl_->training()) throw Error("last_loss needs an engine built for training (Mode::Train)");
  if (!impl_->gradients_made) throw Error("last_loss: no train step has run yet");
  float value = 0;
  impl_->download(&value, impl_->loss_value, 1);
  return value;
}

float Engine::learning_rate() const {
  require_arena();
  if (!impl_->training()) throw Error("learning_rate needs an engine built for training (Mode::Train)");
  StepState state;
  impl_->download_bytes(&state, impl_->optimizer_args.step, sizeof state);
  return state.lr;
}

std::map<std::string, HostTensor> Engine::parameters() const {
  require_arena();
  return impl_->read_slab(impl_->params, "a copy of the parameters");
}

std::map<std::string, Shape> Engine::parameter_shapes() const {
  std::map<std::string, Shape> shapes;
  for (const auto& slot : impl_->schedule.params) shapes.emplace(slot.spec.name, slot.spec.shape);
  return shapes;
}

std::map<std::string, HostTensor> Engine::gradients() const {
  require_arena();
  if (!impl_->training()) throw Error("gradients need an engine built for training (Mode::Train)");
  return impl_->read_slab(impl_->grads, "a copy of the gradients");
}

void Engine::load_parameters(const std::map<std::string, HostTensor>& given) {
  require_arena();
  const auto& slots = impl_->schedule.params;
  for (const auto& entry : given) {
    bool known = false;
    for (const auto& slot : slots) known = known || slot.spec.name == entry.first;
    if (!known) throw InputError("unknown parameter '" + entry.first + "' (the network has no such parameter)");
  }
  for (const auto& slot : slots) {
    const auto it = given.find(slot.spec.name);
    if (it == given.end()) throw InputError("missing parameter '" + slot.spec.name + "'");
    if (it->second.shape != slot.spec.shape)
      throw InputError("parameter '" + slot.spec.name + "' has shape " + to_string(it->second.shape) + ", expected " +
                       to_string(slot.spec.shape));
    check_holds_shape("parameter '" + slot.spec.name + "'", it->second);
  }
  impl_->write_slab(impl_->params, given);
  impl_->synchronize();
}

HostTensor Engine::input_gradient() const {
  require_arena();
  if (!impl_->input_grad) throw Error("input_gradient needs Options::input_grad and a training engine");
  if (!impl_->gradients_made) throw Error("input_gradient: no train step has run yet");
  HostTensor t = std::move(host_tensors({impl_->graph->tensors[0].shape}, "a copy of the input's gradient")[0]);
  impl_->download(t.data.data(), impl_->input_grad, t.data.size());
  return t;
}

}  // namespace anvil
