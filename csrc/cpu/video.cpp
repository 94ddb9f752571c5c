// CPU kernels of the video ops. Contracts: ../cuda/video.h; argument checks live in the Python
// wrappers (rlvr_fast/ops/video.py), so these assume contiguous, consistent arguments.
#include "video.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace rlvr_fast::cpu {
namespace {

template <typename T>
void gather_rows(const int32_t* codes, int64_t n, int64_t hw, const T* table, int64_t k, int64_t c, T* out,
                 bool channels_last) {
  if (channels_last) {
    at::parallel_for(0, n * hw, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int32_t code = codes[i];
        T* dst = out + i * c;
        if (code >= 0 && code < k) {
          std::memcpy(dst, table + static_cast<int64_t>(code) * c, sizeof(T) * c);
        } else {
          std::fill(dst, dst + c, T(0.0f));
        }
      }
    });
    return;
  }
  // NCHW: out[img, ch, p]; walk p innermost so the writes stream.
  at::parallel_for(0, n * c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t img = row / c, ch = row % c;
      const int32_t* src = codes + img * hw;
      T* dst = out + row * hw;
      for (int64_t p = 0; p < hw; ++p) {
        const int32_t code = src[p];
        dst[p] = (code >= 0 && code < k) ? table[static_cast<int64_t>(code) * c + ch] : T(0.0f);
      }
    }
  });
}

// Per-plane sums for one (prediction, target) channel pair: sum (x-y)^2, sum |x-y|, sum of the SSIM
// map. Streams the rows once: a horizontal pass of the five window statistics per input row into a
// ring of `ws` rows, then the vertical pass and the SSIM formula for each completed output row.
struct PlaneSums {
  double sq = 0, abs = 0, ssim = 0;
};

struct Scratch {
  std::vector<float> x, y;      // one clamped input row each
  std::vector<float> ring;      // [ws][5][wo]: horizontally filtered rows
  std::vector<float> acc;       // [5][wo]: one vertically filtered output row
  Scratch(int64_t w, int64_t ws, int64_t wo)
      : x(w), y(w), ring(static_cast<size_t>(std::max<int64_t>(ws * 5 * wo, 1))),
        acc(static_cast<size_t>(std::max<int64_t>(5 * wo, 1))) {}
};

template <typename TP, typename TT>
PlaneSums plane_sums(const TP* xp, const TT* yp, const PixelMetricsArgs& a, Scratch& s) {
  const int64_t h = a.height, w = a.width, ws = a.want_ssim ? a.window_size : 0;
  const int64_t wo = a.want_ssim ? w - ws + 1 : 0;
  const float hi = a.data_range, c1 = a.c1, c2 = a.c2;
  const float* win = a.window;
  PlaneSums out;
  float* xr = s.x.data();
  float* yr = s.y.data();
  for (int64_t r = 0; r < h; ++r) {
    float sq = 0.f, ab = 0.f;
    for (int64_t q = 0; q < w; ++q) {
      float xv = static_cast<float>(xp[r * w + q]);
      float yv = static_cast<float>(yp[r * w + q]);
      xv = std::min(std::max(xv, 0.f), hi);  // clamp to [0, L]; NaN stays NaN, as torch.clamp
      yv = std::min(std::max(yv, 0.f), hi);
      xr[q] = xv;
      yr[q] = yv;
      const float d = xv - yv;
      sq += d * d;
      ab += std::fabs(d);
    }
    out.sq += sq;
    out.abs += ab;
    if (!ws) continue;
    // horizontal pass into ring slot r % ws: [mx, my, mxx, myy, mxy] x wo
    float* slot = s.ring.data() + (r % ws) * 5 * wo;
    float* __restrict__ hx = slot;  // restrict: the five rows never alias, so the loop vectorises
    float* __restrict__ hy = slot + wo;
    float* __restrict__ hxx = slot + 2 * wo;
    float* __restrict__ hyy = slot + 3 * wo;
    float* __restrict__ hxy = slot + 4 * wo;
    // q innermost so the compiler vectorises across output columns
    std::fill(slot, slot + 5 * wo, 0.f);
    for (int64_t v = 0; v < ws; ++v) {
      const float wv = win[v];
      const float* xs = xr + v;
      const float* ys = yr + v;
      for (int64_t q = 0; q < wo; ++q) {
        const float xv = xs[q], yv = ys[q];
        hx[q] += wv * xv;
        hy[q] += wv * yv;
        hxx[q] += wv * xv * xv;
        hyy[q] += wv * yv * yv;
        hxy[q] += wv * xv * yv;
      }
    }
    if (r < ws - 1) continue;
    // vertical pass over rows r-ws+1..r: output row r-ws+1
    float* __restrict__ acc = s.acc.data();
    std::fill(acc, acc + 5 * wo, 0.f);
    for (int64_t u = 0; u < ws; ++u) {
      const float* __restrict__ src = s.ring.data() + ((r - ws + 1 + u) % ws) * 5 * wo;
      const float wu = win[u];
      for (int64_t q = 0; q < 5 * wo; ++q) acc[q] += wu * src[q];
    }
    float row_sum = 0.f;
    for (int64_t q = 0; q < wo; ++q) {
      const float mx = acc[q], my = acc[wo + q];
      const float vx = acc[2 * wo + q] - mx * mx, vy = acc[3 * wo + q] - my * my, cxy = acc[4 * wo + q] - mx * my;
      const float l = (2.f * mx * my + c1) / (mx * mx + my * my + c1);
      const float cs = (2.f * cxy + c2) / (vx + vy + c2);
      row_sum += l * cs;
    }
    out.ssim += row_sum;
  }
  return out;
}

template <typename TP, typename TT>
void pixel_metrics_typed(const PixelMetricsArgs& a) {
  const int64_t n = a.n_images, ch = a.channels, plane = a.height * a.width;
  const int64_t ws = a.window_size;
  const int64_t wo = a.width - ws + 1, ho = a.height - ws + 1;
  const TP* pred = static_cast<const TP*>(a.pred);
  const TT* target = static_cast<const TT*>(a.target);
  std::vector<PlaneSums> sums(static_cast<size_t>(n * ch));
  at::parallel_for(0, n * ch, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(a.width, ws, wo);
    for (int64_t pc = begin; pc < end; ++pc) {
      const int64_t i = pc / ch, c = pc % ch;
      const int64_t j = ((i / a.frames) / a.group_size) * a.frames + i % a.frames;
      sums[pc] = plane_sums(pred + (i * ch + c) * plane, target + (j * ch + c) * plane, a, scratch);
    }
  });
  const double count = static_cast<double>(ch * plane);
  const double l2 = static_cast<double>(a.data_range) * a.data_range;
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0, ab = 0, ss = 0;
    for (int64_t c = 0; c < ch; ++c) {
      sq += sums[i * ch + c].sq;
      ab += sums[i * ch + c].abs;
      ss += sums[i * ch + c].ssim;
    }
    const double mse = sq / count;
    a.out[i] = static_cast<float>(mse);
    a.out[n + i] = static_cast<float>(ab / count);
    a.out[2 * n + i] = static_cast<float>(10.0 * std::log10(l2 / (mse + 1e-8)));
    a.out[3 * n + i] = a.want_ssim ? static_cast<float>(ss / (static_cast<double>(ho * wo) * ch))
                                   : std::numeric_limits<float>::quiet_NaN();
  }
}

template <typename TP>
void pixel_metrics_target(const PixelMetricsArgs& a) {
  switch (a.target_dtype) {
    case Dtype::kFloat32: return pixel_metrics_typed<TP, float>(a);
    case Dtype::kBFloat16: return pixel_metrics_typed<TP, c10::BFloat16>(a);
    case Dtype::kFloat16: return pixel_metrics_typed<TP, c10::Half>(a);
  }
}

}  // namespace

void unpack_video_tokens(const int64_t* responses, const bool* mask, int64_t batch, int64_t seq_len,
                         const int32_t* slot_pos, int64_t n_slots, int64_t visual_offset, int64_t visual_vocab,
                         int32_t* codes, bool* valid, int32_t* n_invalid) {
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int32_t bad = 0;
      for (int64_t s = 0; s < n_slots; ++s) {
        // a slot past the response (or negative) is invalid and never read; the unsigned difference
        // avoids signed overflow for ids near INT64_MIN
        const int64_t pos = slot_pos[s];
        bool ok = pos >= 0 && pos < seq_len;
        int64_t tok = 0;
        if (ok) {
          const int64_t at = b * seq_len + pos;
          const uint64_t diff = static_cast<uint64_t>(responses[at]) - static_cast<uint64_t>(visual_offset);
          ok = mask[at] && responses[at] >= visual_offset && diff < static_cast<uint64_t>(visual_vocab);
          tok = static_cast<int64_t>(diff);
        }
        codes[b * n_slots + s] = ok ? static_cast<int32_t>(tok) : 0;
        bad += !ok;
      }
      n_invalid[b] = bad;
      valid[b] = bad == 0;
    }
  });
}

void codes_to_latents(const int32_t* codes, int64_t n, int64_t hw, const void* table, Dtype dtype, int64_t k,
                      int64_t c, void* out, bool channels_last) {
  switch (dtype) {
    case Dtype::kFloat32:
      return gather_rows(codes, n, hw, static_cast<const float*>(table), k, c, static_cast<float*>(out), channels_last);
    case Dtype::kBFloat16:
      return gather_rows(codes, n, hw, static_cast<const c10::BFloat16*>(table), k, c,
                         static_cast<c10::BFloat16*>(out), channels_last);
    case Dtype::kFloat16:
      return gather_rows(codes, n, hw, static_cast<const c10::Half*>(table), k, c, static_cast<c10::Half*>(out),
                         channels_last);
  }
}

void pixel_metrics(const PixelMetricsArgs& a) {
  if (a.n_images == 0) return;
  switch (a.pred_dtype) {
    case Dtype::kFloat32: return pixel_metrics_target<float>(a);
    case Dtype::kBFloat16: return pixel_metrics_target<c10::BFloat16>(a);
    case Dtype::kFloat16: return pixel_metrics_target<c10::Half>(a);
  }
}

void scatter_sequence_reward(const float* reward, const bool* mask, int64_t batch, int64_t seq_len, float* out) {
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* row = out + b * seq_len;
      std::fill(row, row + seq_len, 0.0f);
      for (int64_t t = seq_len - 1; t >= 0; --t) {
        if (mask[b * seq_len + t]) {
          row[t] = reward[b];
          break;
        }
      }
    }
  });
}

}  // namespace rlvr_fast::cpu
