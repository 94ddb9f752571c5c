// Plain argument types shared by the CPU kernels (csrc/cpu/video.cpp) and the CUDA kernels
// (csrc/cuda/video.cu). No torch and no CUDA headers, so both compilers can include it.
#pragma once

#include <cstdint>

namespace rlvr_fast {

enum class Dtype : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

constexpr int32_t kMaxWindow = 31;

// pixel_metrics arguments: see the contract in cuda/video.h (launch_pixel_metrics).
struct PixelMetricsArgs {
  const void* pred;
  Dtype pred_dtype;
  const void* target;
  Dtype target_dtype;
  int64_t n_images;    // B * frames
  int64_t frames;      // 1 for single-frame inputs
  int64_t group_size;  // predictions per target
  int64_t channels, height, width;
  float data_range;
  float c1, c2;         // (k1 L)^2, (k2 L)^2
  bool want_ssim;
  int32_t window_size;  // odd, 1..kMaxWindow, <= height and width
  float window[32];     // 1-D Gaussian weights, summing to 1
  float* workspace;     // pixel_metrics_workspace_floats(*this) floats, scratch (CUDA only)
  float* out;           // [4, n_images]: rows mse, mae, psnr, ssim (NaN when !want_ssim)
};

}  // namespace rlvr_fast
