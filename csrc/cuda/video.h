// Launchers of the video CUDA kernels (csrc/cuda/video.cu).
//
// Plain C++ and CUDA runtime types only, no torch headers: `nvcc` compile-checks the .cu files on
// machines without a CUDA build of torch (the design doc, DESIGN.md section 3). csrc/bindings.cpp converts tensors
// to these arguments; the Python wrappers in rlvr_fast/ops/video.py validate every input first, so
// the launchers assume contiguous, in-range, same-device arguments.
//
// Every launcher enqueues on `stream`, never synchronises, and returns the launch error
// (cudaGetLastError) so the caller can raise. Reductions run in a fixed order (no float atomics):
// the same inputs give the same bits.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../video_types.h"

namespace rlvr_fast {

// 1. unpack_video_tokens. For sample b and visual slot s (at response position slot_pos[s]):
//      tok = responses[b, slot_pos[s]], ok = mask[b, slot_pos[s]] && visual_offset <= tok < visual_offset + visual_vocab
//      codes[b, s] = ok ? tok - visual_offset : 0
//    n_invalid[b] = number of slots with !ok, valid[b] = (n_invalid[b] == 0).
cudaError_t launch_unpack_video_tokens(const int64_t* responses, const bool* mask, int64_t batch, int64_t seq_len,
                                       const int32_t* slot_pos, int64_t n_slots, int64_t visual_offset,
                                       int64_t visual_vocab, int32_t* codes, bool* valid, int32_t* n_invalid,
                                       cudaStream_t stream);

// 2. codes_to_latents: a gather from a per-code table [K, C] (dtype `dtype`, the output's dtype).
//      channels_last == false: out[n, c, p] = table[codes[n, p], c]   (out [N, C, HW])
//      channels_last == true:  out[n, p, c] = table[codes[n, p], c]   (out [N, HW, C])
//    A code outside [0, K) writes zeros (never read out of bounds; the wrapper rejects such codes).
cudaError_t launch_codes_to_latents(const int32_t* codes, int64_t n, int64_t hw, const void* table, Dtype dtype,
                                    int64_t k, int64_t c, void* out, bool channels_last, cudaStream_t stream);

// 3. pixel_metrics. Images are [C, H, W] planes, contiguous. Prediction image i in [0, n_images)
//    belongs to sample i / frames and frame i % frames; its target image is
//      j = ((i / frames) / group_size) * frames + i % frames
//    (the target is read in place, never repeated). With x = clamp(pred, 0, L), y = clamp(target, 0, L)
//    as float and L = data_range:
//      mse = mean_{c,h,w} (x - y)^2, mae = mean |x - y|, psnr = 10 log10(L^2 / (mse + 1e-8))
//      ssim = mean_c mean_{valid positions} l * cs   (piqa: separable window w, valid padding)
//        mu_x = sum_{u,v} w_u w_v x, s_xx = sum w w x^2 - mu_x^2, s_xy = sum w w x y - mu_x mu_y
//        l = (2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1), cs = (2 s_xy + c2) / (s_xx + s_yy + c2)
//    out is [4, n_images] float32: rows mse, mae, psnr, ssim (NaN when !want_ssim).
// (PixelMetricsArgs, Dtype and kMaxWindow are in ../video_types.h, shared with the CPU kernels.)

int64_t pixel_metrics_workspace_floats(const PixelMetricsArgs& args);
cudaError_t launch_pixel_metrics(const PixelMetricsArgs& args, cudaStream_t stream);

// 5. scatter_sequence_reward: out[b, t] = reward[b] at the last t with mask[b, t], 0 elsewhere;
//    a row without any valid token is all zeros.
cudaError_t launch_scatter_sequence_reward(const float* reward, const bool* mask, int64_t batch, int64_t seq_len,
                                           float* out, cudaStream_t stream);

}  // namespace rlvr_fast
