// CPU kernels of the video ops (csrc/cpu/video.cpp): the same contracts as the CUDA launchers in
// ../cuda/video.h, on host pointers, parallelised with at::parallel_for.
#pragma once

#include <cstdint>

#include "../video_types.h"

namespace rlvr_fast::cpu {

void unpack_video_tokens(const int64_t* responses, const bool* mask, int64_t batch, int64_t seq_len,
                         const int32_t* slot_pos, int64_t n_slots, int64_t visual_offset, int64_t visual_vocab,
                         int32_t* codes, bool* valid, int32_t* n_invalid);

void codes_to_latents(const int32_t* codes, int64_t n, int64_t hw, const void* table, Dtype dtype, int64_t k,
                      int64_t c, void* out, bool channels_last);

// args.workspace is unused on the CPU.
void pixel_metrics(const PixelMetricsArgs& args);

void scatter_sequence_reward(const float* reward, const bool* mask, int64_t batch, int64_t seq_len, float* out);

}  // namespace rlvr_fast::cpu
