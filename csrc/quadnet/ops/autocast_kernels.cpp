// Autocast kernels (AutocastCPU, AutocastCUDA) of quadnet's public ops, torchvision's policy:
// under torch.autocast an op runs in float32 — its inputs cast (float64 stays float64), the
// autocast key excluded while it runs — and returns its result in the dtype of its first input,
// so forward and backward run in one dtype whatever mix of float32 parameters and reduced-
// precision activations autocast produced (a quadratic form squares its inputs' rounding).
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <torch/library.h>

#include "detail.h"
#include "quadratic_conv.h"
#include "quadratic_form.h"

namespace quadnet {
namespace ops {

namespace {

template <c10::DeviceType device>
struct AutocastFloat32 {
  AutocastFloat32() : no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device)) {}
  at::Tensor operator()(const at::Tensor& t) const { return at::autocast::cached_cast(at::kFloat, t, device); }
  c10::impl::ExcludeDispatchKeyGuard no_autocast;
};

template <c10::DeviceType device>
at::Tensor quadratic_form_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  AutocastFloat32<device> f32;
  return quadnet::quadratic_form(f32(x), f32(weight), f32(S)).to(x.scalar_type());
}

template <c10::DeviceType device>
at::Tensor diagonal_quadratic_form_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha) {
  AutocastFloat32<device> f32;
  return quadnet::diagonal_quadratic_form(f32(x), f32(weight), f32(alpha)).to(x.scalar_type());
}

template <c10::DeviceType device>
at::Tensor quadratic_features_autocast(const at::Tensor& h, const at::Tensor& S) {
  AutocastFloat32<device> f32;
  return quadnet::quadratic_features(f32(h), f32(S)).to(h.scalar_type());
}

template <c10::DeviceType device>
at::Tensor quadratic_conv2d_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  AutocastFloat32<device> f32;
  return quadnet::quadratic_conv2d(f32(x), f32(weight), f32(S), stride, padding, dilation).to(x.scalar_type());
}

template <c10::DeviceType device>
at::Tensor diagonal_quadratic_conv2d_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation) {
  AutocastFloat32<device> f32;
  return quadnet::diagonal_quadratic_conv2d(f32(x), f32(weight), f32(alpha), stride, padding, dilation)
      .to(x.scalar_type());
}

template <c10::DeviceType device>
at::Tensor canonical_gradient_autocast(const at::Tensor& X, const at::Tensor& G) {
  AutocastFloat32<device> f32;
  return quadnet::canonical_gradient(f32(X), f32(G)).to(X.scalar_type());
}

template <c10::DeviceType device>
at::Tensor canonical_form_autocast(const at::Tensor& weight, const at::Tensor& S) {
  AutocastFloat32<device> f32;
  return quadnet::canonical_form(f32(weight), f32(S)).to(weight.scalar_type());
}

template <c10::DeviceType device>
at::Tensor diagonal_canonical_form_autocast(const at::Tensor& weight, const at::Tensor& alpha) {
  AutocastFloat32<device> f32;
  return quadnet::diagonal_canonical_form(f32(weight), f32(alpha)).to(weight.scalar_type());
}

}  // namespace
}  // namespace ops
}  // namespace quadnet

#define QUADNET_REGISTER_AUTOCAST(device)                                                                  \
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_autocast<device>));                       \
  m.impl("diagonal_quadratic_form", TORCH_FN(quadnet::ops::diagonal_quadratic_form_autocast<device>));     \
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_autocast<device>));               \
  m.impl("quadratic_conv2d", TORCH_FN(quadnet::ops::quadratic_conv2d_autocast<device>));                   \
  m.impl("diagonal_quadratic_conv2d", TORCH_FN(quadnet::ops::diagonal_quadratic_conv2d_autocast<device>)); \
  m.impl("canonical_gradient", TORCH_FN(quadnet::ops::canonical_gradient_autocast<device>));               \
  m.impl("canonical_form", TORCH_FN(quadnet::ops::canonical_form_autocast<device>));                       \
  m.impl("diagonal_canonical_form", TORCH_FN(quadnet::ops::diagonal_canonical_form_autocast<device>));

TORCH_LIBRARY_IMPL(quadnet, AutocastCPU, m){QUADNET_REGISTER_AUTOCAST(c10::DeviceType::CPU)}

TORCH_LIBRARY_IMPL(quadnet, AutocastCUDA, m) {
  QUADNET_REGISTER_AUTOCAST(c10::DeviceType::CUDA)
}
#undef QUADNET_REGISTER_AUTOCAST
