// pybind11 module rlvr_fast._C: allocates outputs, picks the CPU or CUDA kernel by device, raises on
// launch errors. The Python wrappers (rlvr_fast/ops/video.py) validate arguments and register each
// function as a torch.library custom op with a fake kernel; the TORCH_CHECKs here only guard memory
// safety for direct callers.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/video.h"
#include "video_types.h"

#ifdef RLVR_FAST_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/video.h"
#define RLVR_CUDA_CHECK(expr)                                                      \
  do {                                                                             \
    const cudaError_t err_ = (expr);                                               \
    TORCH_CHECK(err_ == cudaSuccess, "rlvr_fast._C: ", cudaGetErrorString(err_)); \
  } while (0)
#endif

namespace {

using rlvr_fast::Dtype;

Dtype to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kHalf: return Dtype::kFloat16;
    default: TORCH_CHECK(false, name, ": expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
  TORCH_CHECK(t.device() == device, name, ": expected device ", device, ", got ", t.device());
}

[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "rlvr_fast._C was built without CUDA (CppExtension): CUDA tensors are not supported; "
                     "rebuild with a CUDA toolchain and a CUDA build of torch");
}

std::vector<at::Tensor> unpack_video_tokens(const at::Tensor& responses, const at::Tensor& mask,
                                            const at::Tensor& slot_pos, int64_t visual_offset, int64_t visual_vocab) {
  const auto dev = responses.device();
  check(responses, "responses", at::kLong, dev);
  check(mask, "response_mask", at::kBool, dev);
  check(slot_pos, "slot_pos", at::kInt, dev);
  TORCH_CHECK(responses.dim() == 2 && mask.sizes() == responses.sizes(), "responses/response_mask: shape mismatch");
  TORCH_CHECK(visual_vocab >= 0 && visual_vocab <= INT32_MAX, "visual_vocab: expected 0..2^31-1 (codes are int32)");
  const int64_t b = responses.size(0), t = responses.size(1), s = slot_pos.numel();
  auto codes = at::empty({b, s}, responses.options().dtype(at::kInt));
  auto valid = at::empty({b}, responses.options().dtype(at::kBool));
  auto n_invalid = at::empty({b}, responses.options().dtype(at::kInt));
  if (responses.is_cuda()) {
#ifdef RLVR_FAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    RLVR_CUDA_CHECK(rlvr_fast::launch_unpack_video_tokens(
        responses.data_ptr<int64_t>(), mask.data_ptr<bool>(), b, t, slot_pos.data_ptr<int32_t>(), s, visual_offset,
        visual_vocab, codes.data_ptr<int32_t>(), valid.data_ptr<bool>(), n_invalid.data_ptr<int32_t>(),
        c10::cuda::getCurrentCUDAStream()));
#else
    no_cuda();
#endif
  } else {
    rlvr_fast::cpu::unpack_video_tokens(responses.data_ptr<int64_t>(), mask.data_ptr<bool>(), b, t,
                                        slot_pos.data_ptr<int32_t>(), s, visual_offset, visual_vocab,
                                        codes.data_ptr<int32_t>(), valid.data_ptr<bool>(),
                                        n_invalid.data_ptr<int32_t>());
  }
  return {codes, valid, n_invalid};
}

// codes [N, HW] int32, table [K, C] -> [N, C, HW] (channels_last=false) or [N, HW, C]
at::Tensor codes_to_latents(const at::Tensor& codes, const at::Tensor& table, bool channels_last) {
  const auto dev = codes.device();
  check(codes, "codes", at::kInt, dev);
  const Dtype dtype = to_dtype(table, "table");
  check(table, "table", table.scalar_type(), dev);
  TORCH_CHECK(codes.dim() == 2 && table.dim() == 2, "codes_to_latents: expected codes [N, HW] and table [K, C]");
  const int64_t n = codes.size(0), hw = codes.size(1), k = table.size(0), c = table.size(1);
  auto out = channels_last ? at::empty({n, hw, c}, table.options()) : at::empty({n, c, hw}, table.options());
  if (codes.is_cuda()) {
#ifdef RLVR_FAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    RLVR_CUDA_CHECK(rlvr_fast::launch_codes_to_latents(codes.data_ptr<int32_t>(), n, hw, table.data_ptr(), dtype, k,
                                                       c, out.data_ptr(), channels_last,
                                                       c10::cuda::getCurrentCUDAStream()));
#else
    no_cuda();
#endif
  } else {
    rlvr_fast::cpu::codes_to_latents(codes.data_ptr<int32_t>(), n, hw, table.data_ptr(), dtype, k, c,
                                     out.data_ptr(), channels_last);
  }
  return out;
}

// pred [N, C, H, W], target [M, C, H, W], window [ws] float32 (on the host) -> [4, N] float32
at::Tensor pixel_metrics(const at::Tensor& pred, const at::Tensor& target, int64_t frames, int64_t group_size,
                         double data_range, double k1, double k2, bool want_ssim, const at::Tensor& window) {
  const auto dev = pred.device();
  rlvr_fast::PixelMetricsArgs a{};
  a.pred_dtype = to_dtype(pred, "pred");
  a.target_dtype = to_dtype(target, "target");
  check(pred, "pred", pred.scalar_type(), dev);
  check(target, "target", target.scalar_type(), dev);
  TORCH_CHECK(pred.dim() == 4 && target.dim() == 4 && pred.sizes().slice(1) == target.sizes().slice(1),
              "pixel_metrics: expected pred [N, C, H, W] and target [M, C, H, W] with the same C, H, W");
  TORCH_CHECK(frames >= 1 && group_size >= 1 && target.size(0) % frames == 0 &&
                  target.size(0) * group_size == pred.size(0),
              "pixel_metrics: need N = M * group_size and frames dividing M");
  TORCH_CHECK(window.device().is_cpu() && window.scalar_type() == at::kFloat && window.dim() == 1,
              "window: expected a 1-d float32 CPU tensor");
  const int64_t ws = window.numel();
  TORCH_CHECK(ws % 2 == 1 && ws <= rlvr_fast::kMaxWindow, "window: expected an odd size <= ", rlvr_fast::kMaxWindow);
  TORCH_CHECK(!want_ssim || (ws <= pred.size(2) && ws <= pred.size(3)), "pixel_metrics: frames smaller than the window");
  a.pred = pred.data_ptr();
  a.target = target.data_ptr();
  a.n_images = pred.size(0);
  a.frames = frames;
  a.group_size = group_size;
  a.channels = pred.size(1);
  a.height = pred.size(2);
  a.width = pred.size(3);
  a.data_range = static_cast<float>(data_range);
  a.c1 = static_cast<float>(std::pow(k1 * data_range, 2));
  a.c2 = static_cast<float>(std::pow(k2 * data_range, 2));
  a.want_ssim = want_ssim;
  a.window_size = static_cast<int32_t>(ws);
  const float* w = window.data_ptr<float>();
  for (int64_t i = 0; i < ws; ++i) a.window[i] = w[i];
  auto out = at::empty({4, a.n_images}, pred.options().dtype(at::kFloat));
  a.out = out.data_ptr<float>();
  if (pred.is_cuda()) {
#ifdef RLVR_FAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    auto workspace = at::empty({std::max<int64_t>(rlvr_fast::pixel_metrics_workspace_floats(a), 1)},
                               pred.options().dtype(at::kFloat));
    a.workspace = workspace.data_ptr<float>();
    RLVR_CUDA_CHECK(rlvr_fast::launch_pixel_metrics(a, c10::cuda::getCurrentCUDAStream()));
#else
    no_cuda();
#endif
  } else {
    rlvr_fast::cpu::pixel_metrics(a);
  }
  return out;
}

at::Tensor scatter_sequence_reward(const at::Tensor& reward, const at::Tensor& mask) {
  const auto dev = reward.device();
  check(reward, "reward", at::kFloat, dev);
  check(mask, "response_mask", at::kBool, dev);
  TORCH_CHECK(mask.dim() == 2 && reward.dim() == 1 && reward.size(0) == mask.size(0),
              "scatter_sequence_reward: expected reward [B] and response_mask [B, T]");
  const int64_t b = mask.size(0), t = mask.size(1);
  auto out = at::empty({b, t}, reward.options());
  if (reward.is_cuda()) {
#ifdef RLVR_FAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dev);
    RLVR_CUDA_CHECK(rlvr_fast::launch_scatter_sequence_reward(reward.data_ptr<float>(), mask.data_ptr<bool>(), b, t,
                                                              out.data_ptr<float>(),
                                                              c10::cuda::getCurrentCUDAStream()));
#else
    no_cuda();
#endif
  } else {
    rlvr_fast::cpu::scatter_sequence_reward(reward.data_ptr<float>(), mask.data_ptr<bool>(), b, t,
                                            out.data_ptr<float>());
  }
  return out;
}

bool with_cuda() {
#ifdef RLVR_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rlvr_fast._C: video-token decoding and pixel-metric kernels (CPU and, when built with it, CUDA)";
  m.def("with_cuda", &with_cuda, "True when the extension was built with its CUDA kernels");
  m.def("unpack_video_tokens", &unpack_video_tokens, "-> [codes int32 [B, S], valid bool [B], n_invalid int32 [B]]");
  m.def("codes_to_latents", &codes_to_latents, "codes [N, HW] int32, table [K, C] -> [N, C, HW] or [N, HW, C]");
  m.def("pixel_metrics", &pixel_metrics, "-> float32 [4, N]: mse, mae, psnr, ssim");
  m.def("scatter_sequence_reward", &scatter_sequence_reward, "reward [B], mask [B, T] -> [B, T]");
}
