// CUDA kernels of the video ops; the launchers' contract is in video.h.
//
// Plain CUDA runtime only (no torch headers): `nvcc -c` builds this file on a machine without torch.
// Every reduction has a fixed order (per-thread partials, a fixed shuffle tree, per-block partials in
// the workspace, a finalize kernel that sums them sequentially in double): no float atomics, so the
// same inputs give the same bits on every run. Element offsets are 64-bit; grids put the large count
// on gridDim.x and every kernel loops over its blocks, so no launch exceeds the grid limits.
#include "video.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

namespace rlvr_fast {
namespace {

// ------------------------------------------------------------------------------------------------
// Shared helpers
// ------------------------------------------------------------------------------------------------

constexpr int64_t kMaxGrid = INT_MAX;  // gridDim.x limit; kernels loop over the blocks beyond it

inline unsigned grid_for(int64_t blocks) {
  return static_cast<unsigned>(blocks < kMaxGrid ? blocks : kMaxGrid);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Element formats: the three dtypes, plus kFmtAny16 = a 2-byte dtype picked by a runtime flag (bf16
// or fp16, one branch per element), which the SSIM kernel uses for mixed-dtype pairs so that only
// same-dtype pairs (the usual case) get their own instantiations: fewer kernels, shorter compile.
// Loads return float. `stream` is for data read once (evict-first: the predictions, so that the
// targets, re-read by every prediction of a group, stay in L2); `keep` is the default policy.
enum : int { kFmtF32 = 0, kFmtBF16 = 1, kFmtF16 = 2, kFmtAny16 = 3 };

template <int kFmt>
struct Fmt {  // 2-byte formats
  using T = unsigned short;
  static __device__ __forceinline__ float cvt(unsigned short u, bool bf16) {
    const float from_bf16 = __uint_as_float(static_cast<unsigned>(u) << 16);  // exact
    if constexpr (kFmt == kFmtBF16) {
      return from_bf16;
    } else if constexpr (kFmt == kFmtF16) {
      return __half2float(__ushort_as_half(u));
    } else {
      return bf16 ? from_bf16 : __half2float(__ushort_as_half(u));
    }
  }
  static __device__ __forceinline__ float stream(const T* p, bool bf16) { return cvt(__ldcs(p), bf16); }
  static __device__ __forceinline__ float keep(const T* p, bool bf16) { return cvt(__ldg(p), bf16); }
  // 8 consecutive elements from a 16-byte aligned address.
  template <bool kStream>
  static __device__ __forceinline__ void load8(const T* p, bool bf16, float (&v)[8]) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    const uint4 r = kStream ? __ldcs(q) : __ldg(q);
    const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = cvt(static_cast<unsigned short>(w[i] & 0xffffu), bf16);
      v[2 * i + 1] = cvt(static_cast<unsigned short>(w[i] >> 16), bf16);
    }
  }
};
template <>
struct Fmt<kFmtF32> {
  using T = float;
  static __device__ __forceinline__ float stream(const float* p, bool) { return __ldcs(p); }
  static __device__ __forceinline__ float keep(const float* p, bool) { return __ldg(p); }
  template <bool kStream>
  static __device__ __forceinline__ void load8(const float* p, bool, float (&v)[8]) {
    const float4* q = reinterpret_cast<const float4*>(p);
    const float4 a = kStream ? __ldcs(q) : __ldg(q);
    const float4 b = kStream ? __ldcs(q + 1) : __ldg(q + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
};

// clamp(v, 0, hi) with torch.clamp's NaN semantics (NaN stays NaN).
__device__ __forceinline__ float clamp_range(float v, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float r;
  asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(r) : "f"(v));
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(r), "f"(hi));
  return r;
#else
  return v != v ? v : fminf(fmaxf(v, 0.f), hi);
#endif
}

// Sum over a block of blockDim.x == kThreads threads, in a fixed order; the result is valid in thread 0.
// `scratch` holds kThreads / 32 values; the caller syncs before reusing it.
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  static_assert(kThreads % 32 == 0, "whole warps");
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  }
  return total;
}

// Calls f(std::integral_constant<int, kFmt>{}) with kFmt the exact format of `d`.
template <typename F>
cudaError_t with_fmt(Dtype d, F&& f) {
  switch (d) {
    case Dtype::kFloat32:
      return f(std::integral_constant<int, kFmtF32>{});
    case Dtype::kBFloat16:
      return f(std::integral_constant<int, kFmtBF16>{});
    case Dtype::kFloat16:
      return f(std::integral_constant<int, kFmtF16>{});
  }
  return cudaErrorInvalidValue;
}

inline int dtype_size(Dtype d) { return d == Dtype::kFloat32 ? 4 : 2; }
inline bool dtype_ok(Dtype d) { return d == Dtype::kFloat32 || d == Dtype::kBFloat16 || d == Dtype::kFloat16; }

// ------------------------------------------------------------------------------------------------
// 1. unpack_video_tokens
// Floor: reads n_slots * (4 B slot_pos, L2-resident) + per sample n_slots * (1 B mask + 8 B token),
// writes 4 B code per slot + 5 B per sample. One block per sample, threads over its slots.
// ------------------------------------------------------------------------------------------------

constexpr int kUnpackThreads = 256;

__global__ void __launch_bounds__(kUnpackThreads)
    unpack_video_tokens_kernel(const int64_t* __restrict__ responses, const bool* __restrict__ mask, int64_t batch,
                               int64_t seq_len, const int32_t* __restrict__ slot_pos, int64_t n_slots,
                               int64_t visual_offset, int64_t visual_vocab, int32_t* __restrict__ codes,
                               bool* __restrict__ valid, int32_t* __restrict__ n_invalid) {
  __shared__ int64_t scratch[kUnpackThreads / 32];
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const int64_t row = b * seq_len;
    int64_t bad = 0;
    for (int64_t s = threadIdx.x; s < n_slots; s += kUnpackThreads) {
      const int64_t pos = slot_pos[s];
      int32_t code = 0;
      bool ok = false;
      if (pos >= 0 && pos < seq_len && mask[row + pos]) {
        const int64_t tok = responses[row + pos];
        // tok >= offset first, so the unsigned difference is the true one.
        if (tok >= visual_offset &&
            static_cast<uint64_t>(tok) - static_cast<uint64_t>(visual_offset) < static_cast<uint64_t>(visual_vocab)) {
          ok = true;
          code = static_cast<int32_t>(tok - visual_offset);
        }
      }
      codes[b * n_slots + s] = code;
      bad += ok ? 0 : 1;
    }
    const int64_t total = block_sum<kUnpackThreads>(bad, scratch);  // integers: exact in any order
    if (threadIdx.x == 0) {
      n_invalid[b] = static_cast<int32_t>(total);
      valid[b] = total == 0;
    }
    __syncthreads();  // scratch is reused by the next sample
  }
}

// ------------------------------------------------------------------------------------------------
// 2. codes_to_latents: a gather of table rows; the element type only matters through its size
// (zero bits are +0.0 in every float format), so the kernels copy raw words.
// ------------------------------------------------------------------------------------------------

constexpr int kGatherThreads = 256;

// channels_last: out row r (C elements = `units` words of type U) = table row codes[r], or zeros.
// Floor: reads 4 B code per row + the row from the L2-resident table, writes C * esize B per row,
// fully coalesced (consecutive threads -> consecutive words of consecutive rows).
template <typename U>
__global__ void __launch_bounds__(kGatherThreads)
    gather_rows_kernel(const int32_t* __restrict__ codes, int64_t rows, const U* __restrict__ table, int64_t k,
                       int32_t units, int32_t rows_per_block, int64_t n_blocks, U* __restrict__ out) {
  for (int64_t blk = blockIdx.x; blk < n_blocks; blk += gridDim.x) {
    const int64_t r0 = blk * rows_per_block;
    const int64_t r_end = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    const int32_t n_local = static_cast<int32_t>((r_end - r0) * units);  // <= max(units, 4096)
    for (int32_t i = threadIdx.x; i < n_local; i += kGatherThreads) {
      const int32_t lr = i / units, u = i - lr * units;
      const int64_t r = r0 + lr;
      const int32_t code = __ldg(codes + r);
      U v{};
      if (code >= 0 && code < k) v = __ldg(table + static_cast<int64_t>(code) * units + u);
      out[r * units + u] = v;
    }
  }
}

// NCHW: out[n, c, p] = table[codes[n, p], c]. One thread per (n, p), loop over c: every store
// instruction writes consecutive p of one (n, c) (coalesced); the code is read once per (n, p).
// Floor: reads 4 B code per (n, p), writes C * esize B per (n, p).
template <typename E>
__global__ void __launch_bounds__(kGatherThreads)
    gather_planar_kernel(const int32_t* __restrict__ codes, int64_t hw, const E* __restrict__ table, int64_t k,
                         int64_t c, int64_t p_blocks, int64_t n_blocks, E* __restrict__ out) {
  for (int64_t blk = blockIdx.x; blk < n_blocks; blk += gridDim.x) {
    const int64_t n = blk / p_blocks;
    const int64_t p = (blk - n * p_blocks) * kGatherThreads + threadIdx.x;
    if (p >= hw) continue;
    const int32_t code = __ldg(codes + n * hw + p);
    E* dst = out + n * c * hw + p;
    if (code >= 0 && code < k) {
      const E* src = table + static_cast<int64_t>(code) * c;
      for (int64_t ci = 0; ci < c; ++ci) dst[ci * hw] = __ldg(src + ci);
    } else {
      for (int64_t ci = 0; ci < c; ++ci) dst[ci * hw] = E{};
    }
  }
}

// ------------------------------------------------------------------------------------------------
// 3. pixel_metrics
//
// SSIM path (want_ssim): one block per (image, channel, column strip, row segment). Thread t owns
// input column x0 + t of the strip (kThreads columns, kOutCols = kThreads - WS + 1 SSIM outputs) and
// walks down the segment's rows:
//   phase 1 (vertical): loads x, y of its column once per row (clamped, float), keeps the last WS rows
//     of (x, y, x^2 + y^2, x*y) in a register ring, and writes the vertically filtered 4-vector of each
//     output row to shared memory (kChunk rows at a time, kChunk a multiple of WS so the ring indices
//     are compile-time constants); it also sums (x-y)^2 and |x-y| over the pixels the block owns.
//   phase 2 (horizontal): each of kChunk * kSplits threads takes one row of the chunk and kRun
//     consecutive outputs, filters the 4-vectors along the row and sums l * cs.
// Only 4 filtered quantities are needed: cs uses s_xx + s_yy = E[x^2 + y^2] - mu_x^2 - mu_y^2.
// Ownership (each pixel counted once in mse/mae): the strip owns its kOutCols input columns and the
// last strip also the trailing ws-1; the segment owns its output rows and the last one also the
// trailing ws-1 rows (so frames narrower than a strip or shorter than a segment are covered too).
// Block order: segments, then strips, then channels, then images, so the blocks in flight at a time
// share one target image (L2 hits for the group_size predictions that read it).
// Floor per prediction pixel: one read of pred (evict-first) + one read of target (from L2 mostly,
// re-read by the group_size predictions that share it); writes 3 floats per block. The WS-1 column
// halo of each strip is read twice (~8% for WS=11). This path is bound by FP32 issue, not by HBM:
// 2 x 4 x WS FMAs per SSIM output (88 for WS=11).
//
// mse/mae path (!want_ssim): a flat, vectorised reduction over each image's C*H*W elements in chunks
// of kMseChunk. Floor: read pred + target once.
// ------------------------------------------------------------------------------------------------

template <int WS>
struct SsimTile {
  static_assert(WS >= 1 && WS <= kMaxWindow && WS % 2 == 1, "odd window up to kMaxWindow");
  static constexpr int kThreads = WS <= 19 ? 128 : 64;        // input columns per strip
  static constexpr int kOutCols = kThreads - WS + 1;          // SSIM output columns per strip
  static constexpr int kChunk = WS * ((8 + WS - 1) / WS);     // rows per phase-1/phase-2 round
  static constexpr int kSplitsMax = kThreads / kChunk;
  static constexpr int kRun = (kOutCols + kSplitsMax - 1) / kSplitsMax;  // outputs per phase-2 item
  static constexpr int kSplits = (kOutCols + kRun - 1) / kRun;
  static constexpr int kPitchMin = kSplits * kRun + WS - 1 > kThreads ? kSplits * kRun + WS - 1 : kThreads;
  // Row pitch in float4s, = 1 mod 8: phase 2's 16-byte loads (lane -> row t % kChunk, run t / kChunk)
  // then hit distinct bank groups in (almost) every quarter warp; phase 1's stores are contiguous.
  static constexpr int kPitch = kPitchMin + (9 - kPitchMin % 8) % 8;
  static constexpr int kBatch = kChunk <= 15 ? kChunk : 8;  // rows whose loads are issued together
  // Register cap: 4 blocks/SM (<= 128 registers) fits WS <= 11 without spills; 5 blocks spills at
  // WS=11 and 4 blocks spills at WS=13/15 (checked with -Xptxas -v for sm_80 and sm_90).
  static constexpr int kMinBlocks = WS <= 11 ? 4 : 1;
  static_assert(kChunk * kSplits <= kThreads, "phase 2 fits the block");
  static_assert(kChunk * kPitch * 16 <= 42 * 1024, "static shared memory");
};

// Host mirror of SsimTile<ws>::kOutCols (checked against it at each instantiation).
constexpr int ssim_out_cols(int ws) { return (ws <= 19 ? 128 : 64) - ws + 1; }

// Window buckets: exact kernels up to 15 (the common 7 and 11 included), then 19, 23 and 31 with
// zero-padded weights (see ssim_kernel). Loads and FMAs scale with the bucket, so a window runs at most
// 31/25 = 1.24x its own work (17 -> 19: 1.12x, 21 -> 23: 1.10x); a single 31 bucket cost 31/17 = 1.82x
// at 17. Three wide buckets, not eight: the unrolled wide kernels dominate the compile time.
constexpr int ssim_bucket(int ws) { return ws <= 15 ? ws : ws <= 19 ? 19 : ws <= 23 ? 23 : 31; }

constexpr int kMseThreads = 256;
constexpr int kMseChunk = kMseThreads * 8 * 4;  // elements per block
constexpr int64_t kTargetBlocks = 2048;          // split rows into segments below this many blocks
constexpr int64_t kMinSegRows = 32;

struct PmPlan {
  bool ssim = false;
  int64_t groups = 0;           // partial groups per image: C (ssim) or 1 (mse/mae only)
  int64_t blocks_per_group = 0;  // strips * segments (ssim) or chunks (mse/mae only)
  int64_t stride = 0;           // floats per partial: 3 (se, ae, ssim) or 2 (se, ae)
  int64_t nstrip = 0, nseg = 0, seg_rows = 0;
};

bool ssim_geometry_ok(const PixelMetricsArgs& a) {
  return a.window_size >= 1 && a.window_size <= kMaxWindow && a.window_size % 2 == 1 &&
         a.height >= a.window_size && a.width >= a.window_size;
}

PmPlan plan_pixel_metrics(const PixelMetricsArgs& a) {
  PmPlan p;
  p.ssim = a.want_ssim;
  if (p.ssim) {
    p.groups = a.channels;
    p.stride = 3;
    if (!ssim_geometry_ok(a) || a.channels <= 0) return p;
    const int64_t hout = a.height - a.window_size + 1, wout = a.width - a.window_size + 1;
    p.nstrip = ceil_div(wout, ssim_out_cols(ssim_bucket(a.window_size)));
    const int64_t base = a.n_images * a.channels * p.nstrip;
    int64_t nseg = 1;
    if (base < kTargetBlocks) {
      nseg = ceil_div(kTargetBlocks, base);
      const int64_t max_seg = ceil_div(hout, kMinSegRows);
      if (nseg > max_seg) nseg = max_seg;
    }
    p.seg_rows = ceil_div(hout, nseg);
    p.nseg = ceil_div(hout, p.seg_rows);  // every segment non-empty
    p.blocks_per_group = p.nstrip * p.nseg;
  } else {
    p.groups = 1;
    p.stride = 2;
    p.blocks_per_group = ceil_div(a.channels * a.height * a.width, kMseChunk);
  }
  return p;
}

struct SsimParams {
  const void* pred;
  const void* target;
  int64_t frames, group_size, channels, height, width;
  int64_t nstrip, nseg, seg_rows, n_blocks;
  int32_t ws;  // the true window (<= the kernel's WS; the weights beyond it are zero)
  bool pred_bf16, target_bf16;  // for 2-byte storage: bf16 (else fp16)
  float range, c1, c2;
  float w[kMaxWindow];
  float* partials;  // [n_blocks, 3]: se, ae, ssim sum
};

// WS is the window bucket: ws == WS, or ws < WS with zero weights w[ws..WS) (17..19 -> 19,
// 21..23 -> 23, 25..31 -> 31). The extra taps add exact zeros (x, y are finite after the clamp, or NaN, and a NaN anywhere makes the image's
// metrics NaN either way), so a bucket gives the exact-window bits.
template <int WS, int kFmtP, int kFmtT>
__global__ void __launch_bounds__(SsimTile<WS>::kThreads, SsimTile<WS>::kMinBlocks)
    ssim_kernel(const SsimParams p) {
  using Tile = SsimTile<WS>;
  constexpr int kThreads = Tile::kThreads, kOutCols = Tile::kOutCols, kChunk = Tile::kChunk;
  constexpr int kRun = Tile::kRun, kSplits = Tile::kSplits, kPitch = Tile::kPitch, kBatch = Tile::kBatch;
  __shared__ float4 s_v[kChunk * kPitch];  // vertically filtered (mu_x, mu_y, E[x^2+y^2], E[xy])
  __shared__ double s_red[3][kThreads / 32];

  const int t = threadIdx.x;
  const int64_t hw = p.height * p.width;
  const int64_t hout = p.height - p.ws + 1, wout = p.width - p.ws + 1;
  const float range = p.range, c1 = p.c1, c2 = p.c2;

  for (int64_t blk = blockIdx.x; blk < p.n_blocks; blk += gridDim.x) {
    // Block -> (image, channel, strip, segment); consecutive blocks share an image (and its target).
    const int64_t seg = blk % p.nseg;
    const int64_t rest = blk / p.nseg;
    const int64_t strip = rest % p.nstrip;
    const int64_t plane = rest / p.nstrip;
    const int64_t img = plane / p.channels, ch = plane - img * p.channels;
    const int64_t sample = img / p.frames, frame = img - sample * p.frames;
    const int64_t timg = (sample / p.group_size) * p.frames + frame;

    const int64_t x0 = strip * kOutCols, y0 = seg * p.seg_rows;
    const int seg_out = static_cast<int>(p.seg_rows < hout - y0 ? p.seg_rows : hout - y0);  // output rows
    const int rows_in_image = static_cast<int>(p.height - y0);  // segment rows j < this exist
    const bool last_strip = strip == p.nstrip - 1, last_seg = seg == p.nseg - 1;
    const int64_t gc = x0 + t;
    const bool col_active = gc < p.width;
    const bool col_owned = col_active && (t < kOutCols || last_strip);
    const int own_rows = last_seg ? seg_out + p.ws - 1 : seg_out;  // segment rows j < own_rows are owned
    const int out_cols = static_cast<int>(kOutCols < wout - x0 ? kOutCols : wout - x0);

    using FP = Fmt<kFmtP>;
    using FT = Fmt<kFmtT>;
    const int64_t col_off = (col_active ? gc : 0) + y0 * p.width;  // segment row 0 of this column
    const typename FP::T* xb = static_cast<const typename FP::T*>(p.pred) + (img * p.channels + ch) * hw + col_off;
    const typename FT::T* yb = static_cast<const typename FT::T*>(p.target) + (timg * p.channels + ch) * hw + col_off;
    int64_t roff = 0;  // element offset of the next segment row to load

    float rx[WS], ry[WS], rs[WS], rp[WS];  // ring: segment row j lives in slot j % WS
    float se = 0.f, ae = 0.f, ss_sum = 0.f;

    // Loads the next segment row (j, in increasing order) without a branch, so that a batch of rows
    // is in flight together; rows past the image (chunk padding, bucket taps) read as zeros.
    auto load_row = [&](int j, float& a, float& b) {
      const bool ok = col_active && j < rows_in_image;
      a = ok ? FP::stream(xb + roff, p.pred_bf16) : 0.f;
      b = ok ? FT::keep(yb + roff, p.target_bf16) : 0.f;
      roff += p.width;
    };
    // Segment row j's clamped values -> its ring slot (x, y, x^2 + y^2, x*y), and mse/mae if owned.
    auto put_row = [&](int j, float a, float b, float& x, float& y, float& s2, float& xy) {
      a = clamp_range(a, range);
      b = clamp_range(b, range);
      const float d = col_owned && j < own_rows ? a - b : 0.f;
      se = fmaf(d, d, se);
      ae += fabsf(d);
      x = a;
      y = b;
      s2 = fmaf(a, a, b * b);
      xy = a * b;
    };

    // Prologue: segment rows 0 .. WS-2, kBatch loads at a time.
#pragma unroll
    for (int j0 = 0; j0 < WS - 1; j0 += kBatch) {
      float xa[kBatch], ya[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i)
        if (j0 + i < WS - 1) load_row(j0 + i, xa[i], ya[i]);
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int j = j0 + i < WS - 1 ? j0 + i : 0;
        if (j0 + i < WS - 1) put_row(j, xa[i], ya[i], rx[j], ry[j], rs[j], rp[j]);
      }
    }

    // Whole chunks: the rows past seg_out in the last chunk are computed and never summed.
    for (int cb = 0; cb < seg_out; cb += kChunk) {
      // Phase 1: chunk row k (output row cb + k) needs segment rows cb + k .. cb + k + WS - 1.
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += kBatch) {
        float xa[kBatch], ya[kBatch];
#pragma unroll
        for (int i = 0; i < kBatch; ++i)
          if (k0 + i < kChunk) load_row(cb + k0 + i + WS - 1, xa[i], ya[i]);
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int k = k0 + i;
          if (k < kChunk) {
            const int slot = (k + WS - 1) % WS;
            put_row(cb + k + WS - 1, xa[i], ya[i], rx[slot], ry[slot], rs[slot], rp[slot]);
            float mx = 0.f, my = 0.f, m2 = 0.f, mp = 0.f;
#pragma unroll
            for (int u = 0; u < WS; ++u) {
              const int q = (k + u) % WS;
              const float wu = p.w[u];
              mx = fmaf(wu, rx[q], mx);
              my = fmaf(wu, ry[q], my);
              m2 = fmaf(wu, rs[q], m2);
              mp = fmaf(wu, rp[q], mp);
            }
            s_v[k * kPitch + t] = make_float4(mx, my, m2, mp);
          }
        }
      }
      __syncthreads();

      // Phase 2: item t -> chunk row t % kChunk, outputs [s * kRun, s * kRun + kRun) with s = t / kChunk.
      const int rows = seg_out - cb < kChunk ? seg_out - cb : kChunk;
      if (t < kChunk * kSplits) {
        const int r = t % kChunk, s = t / kChunk;
        if (r < rows) {
          const float4* src = s_v + r * kPitch + s * kRun;
          const int run_cols = out_cols - s * kRun;  // outputs k < run_cols are in the image
          float ax[kRun], ay[kRun], a2[kRun], ap[kRun];
#pragma unroll
          for (int j = 0; j < kRun + WS - 1; ++j) {
            const float4 v = src[j];
#pragma unroll
            for (int k = 0; k < kRun; ++k) {
              const int u = j - k;  // compile-time after unrolling
              if (u == 0) {
                const float w0 = p.w[0];
                ax[k] = w0 * v.x;
                ay[k] = w0 * v.y;
                a2[k] = w0 * v.z;
                ap[k] = w0 * v.w;
              } else if (u > 0 && u < WS) {
                const float wu = p.w[u > 0 && u < WS ? u : 0];
                ax[k] = fmaf(wu, v.x, ax[k]);
                ay[k] = fmaf(wu, v.y, ay[k]);
                a2[k] = fmaf(wu, v.z, a2[k]);
                ap[k] = fmaf(wu, v.w, ap[k]);
              }
            }
            const int k = j - (WS - 1);  // output k is complete
            if (k >= 0) {
              const float mx = ax[k], my = ay[k];
              const float mxx = mx * mx, myy = my * my, mxy = mx * my;
              const float l = __fdividef(fmaf(2.f, mxy, c1), mxx + myy + c1);
              // cs = (2 s_xy + c2) / (s_xx + s_yy + c2), both as 2 * (half) + c2: for x == y the two
              // are the same float ops on the same values, so cs == 1 as in piqa.
              const float hs = 0.5f * a2[k] - 0.5f * (mxx + myy);
              const float cs = __fdividef(fmaf(2.f, ap[k] - mxy, c2), fmaf(2.f, hs, c2));
              if (k < run_cols) ss_sum += l * cs;
            }
          }
        }
      }
      __syncthreads();
    }

    // Block partials in a fixed order (float per thread, double across the block).
    const double bse = block_sum<kThreads>(static_cast<double>(se), s_red[0]);
    const double bae = block_sum<kThreads>(static_cast<double>(ae), s_red[1]);
    const double bss = block_sum<kThreads>(static_cast<double>(ss_sum), s_red[2]);
    if (t == 0) {
      float* out = p.partials + blk * 3;
      out[0] = static_cast<float>(bse);
      out[1] = static_cast<float>(bae);
      out[2] = static_cast<float>(bss);
    }
    __syncthreads();  // s_red is reused by the next block of the loop
  }
}

struct MseParams {
  const void* pred;
  const void* target;
  int64_t frames, group_size, chw, nchunk, n_blocks;
  float range;
  float* partials;  // [n_blocks, 2]: se, ae
};

// kVec == 8: 16-byte loads (chw % 8 == 0 and aligned bases); kVec == 1: scalar, coalesced across threads.
template <int kFmtP, int kFmtT, int kVec>
__global__ void __launch_bounds__(kMseThreads) mse_mae_kernel(const MseParams p) {
  using FP = Fmt<kFmtP>;
  using FT = Fmt<kFmtT>;
  __shared__ double s_red[2][kMseThreads / 32];
  const int t = threadIdx.x;
  for (int64_t blk = blockIdx.x; blk < p.n_blocks; blk += gridDim.x) {
    const int64_t img = blk / p.nchunk, chunk = blk - img * p.nchunk;
    const int64_t sample = img / p.frames, frame = img - sample * p.frames;
    const int64_t timg = (sample / p.group_size) * p.frames + frame;
    const typename FP::T* xp = static_cast<const typename FP::T*>(p.pred) + img * p.chw;
    const typename FT::T* yp = static_cast<const typename FT::T*>(p.target) + timg * p.chw;
    const int64_t e0 = chunk * kMseChunk;
    const int64_t e1 = e0 + kMseChunk < p.chw ? e0 + kMseChunk : p.chw;
    float se = 0.f, ae = 0.f;
    float xv[4][8], yv[4][8];
    // All loads of the chunk first (4 x 16 bytes in flight per tensor and thread), then the math.
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      if constexpr (kVec == 8) {
        const int64_t e = e0 + (static_cast<int64_t>(it) * kMseThreads + t) * 8;
        if (e < e1) {
          FP::template load8<true>(xp + e, false, xv[it]);
          FT::template load8<false>(yp + e, false, yv[it]);
        } else {
#pragma unroll
          for (int v = 0; v < 8; ++v) xv[it][v] = yv[it][v] = 0.f;
        }
      } else {
#pragma unroll
        for (int v = 0; v < 8; ++v) {
          const int64_t e = e0 + (static_cast<int64_t>(it) * 8 + v) * kMseThreads + t;
          xv[it][v] = e < e1 ? FP::stream(xp + e, false) : 0.f;
          yv[it][v] = e < e1 ? FT::keep(yp + e, false) : 0.f;
        }
      }
    }
#pragma unroll
    for (int it = 0; it < 4; ++it) {
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        const float d = clamp_range(xv[it][v], p.range) - clamp_range(yv[it][v], p.range);
        se = fmaf(d, d, se);
        ae += fabsf(d);
      }
    }
    const double bse = block_sum<kMseThreads>(static_cast<double>(se), s_red[0]);
    const double bae = block_sum<kMseThreads>(static_cast<double>(ae), s_red[1]);
    if (t == 0) {
      p.partials[blk * 2] = static_cast<float>(bse);
      p.partials[blk * 2 + 1] = static_cast<float>(bae);
    }
    __syncthreads();
  }
}

// One thread per image: sums its partials sequentially in double (fixed order) and writes
// out[0 * n + i] = mse, out[1 * n + i] = mae, out[2 * n + i] = psnr, out[3 * n + i] = ssim.
__global__ void pixel_metrics_finalize_kernel(const float* __restrict__ partials, int64_t n_images, int64_t groups,
                                              int64_t blocks_per_group, int64_t stride, bool ssim, double n_elems,
                                              double n_positions, double range, float* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_images;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double se = 0.0, ae = 0.0, ss = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
      const float* q = partials + (i * groups + g) * blocks_per_group * stride;
      double gs = 0.0;
      for (int64_t b = 0; b < blocks_per_group; ++b, q += stride) {
        se += q[0];
        ae += q[1];
        if (ssim) gs += q[2];
      }
      if (ssim) ss += gs / n_positions;
    }
    const double mse = se / n_elems, mae = ae / n_elems;  // 0 / 0 = NaN for empty images, as torch
    out[i] = static_cast<float>(mse);
    out[n_images + i] = static_cast<float>(mae);
    out[2 * n_images + i] = static_cast<float>(10.0 * log10(range * range / (mse + 1e-8)));
    out[3 * n_images + i] = ssim ? static_cast<float>(ss / static_cast<double>(groups)) : __int_as_float(0x7fffffff);
  }
}

template <int WS>
cudaError_t launch_ssim_ws(const SsimParams& sp, Dtype pd, Dtype td, cudaStream_t stream) {
  static_assert(SsimTile<WS>::kOutCols == ssim_out_cols(WS), "host and device tiles agree");
  const unsigned grid = grid_for(sp.n_blocks);
  constexpr int kThreads = SsimTile<WS>::kThreads;
  const bool p4 = pd == Dtype::kFloat32, t4 = td == Dtype::kFloat32;
  if constexpr (WS <= 15) {  // exact 2-byte formats; the rare wide-bucket kernels use kFmtAny16 for both
    if (pd == Dtype::kBFloat16 && td == Dtype::kBFloat16) {
      ssim_kernel<WS, kFmtBF16, kFmtBF16><<<grid, kThreads, 0, stream>>>(sp);
      return cudaGetLastError();
    }
    if (pd == Dtype::kFloat16 && td == Dtype::kFloat16) {
      ssim_kernel<WS, kFmtF16, kFmtF16><<<grid, kThreads, 0, stream>>>(sp);
      return cudaGetLastError();
    }
  }
  if (p4 && t4) {
    ssim_kernel<WS, kFmtF32, kFmtF32><<<grid, kThreads, 0, stream>>>(sp);
  } else if (p4) {
    ssim_kernel<WS, kFmtF32, kFmtAny16><<<grid, kThreads, 0, stream>>>(sp);
  } else if (t4) {
    ssim_kernel<WS, kFmtAny16, kFmtF32><<<grid, kThreads, 0, stream>>>(sp);
  } else {
    ssim_kernel<WS, kFmtAny16, kFmtAny16><<<grid, kThreads, 0, stream>>>(sp);
  }
  return cudaGetLastError();
}

cudaError_t launch_ssim(const SsimParams& sp, Dtype pd, Dtype td, cudaStream_t stream) {
  switch (ssim_bucket(sp.ws)) {
    case 1: return launch_ssim_ws<1>(sp, pd, td, stream);
    case 3: return launch_ssim_ws<3>(sp, pd, td, stream);
    case 5: return launch_ssim_ws<5>(sp, pd, td, stream);
    case 7: return launch_ssim_ws<7>(sp, pd, td, stream);
    case 9: return launch_ssim_ws<9>(sp, pd, td, stream);
    case 11: return launch_ssim_ws<11>(sp, pd, td, stream);
    case 13: return launch_ssim_ws<13>(sp, pd, td, stream);
    case 15: return launch_ssim_ws<15>(sp, pd, td, stream);
    case 19: return launch_ssim_ws<19>(sp, pd, td, stream);
    case 23: return launch_ssim_ws<23>(sp, pd, td, stream);
    case 31: return launch_ssim_ws<31>(sp, pd, td, stream);
    default: return cudaErrorInvalidValue;
  }
}

// ------------------------------------------------------------------------------------------------
// 5. scatter_sequence_reward. One block per row: a max-reduction finds the last masked t, then the
// row is written. Floor: reads 1 B mask + writes 4 B per element (+ 4 B reward per row).
// ------------------------------------------------------------------------------------------------

constexpr int kScatterThreads = 256;

__global__ void __launch_bounds__(kScatterThreads)
    scatter_sequence_reward_kernel(const float* __restrict__ reward, const bool* __restrict__ mask, int64_t batch,
                                   int64_t seq_len, float* __restrict__ out) {
  __shared__ int64_t s_last[kScatterThreads / 32];
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    const bool* m = mask + b * seq_len;
    int64_t last = -1;
    for (int64_t tt = threadIdx.x; tt < seq_len; tt += kScatterThreads)
      if (m[tt]) last = tt;  // increasing t: the thread's last hit is its max
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const int64_t o = __shfl_xor_sync(0xffffffffu, last, off);
      last = o > last ? o : last;
    }
    if ((threadIdx.x & 31) == 0) s_last[threadIdx.x >> 5] = last;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kScatterThreads / 32; ++w) last = s_last[w] > last ? s_last[w] : last;
    const float r = reward[b];
    float* o = out + b * seq_len;
    for (int64_t tt = threadIdx.x; tt < seq_len; tt += kScatterThreads) o[tt] = tt == last ? r : 0.f;
    __syncthreads();  // s_last is reused by the next row
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Launchers
// ------------------------------------------------------------------------------------------------

cudaError_t launch_unpack_video_tokens(const int64_t* responses, const bool* mask, int64_t batch, int64_t seq_len,
                                       const int32_t* slot_pos, int64_t n_slots, int64_t visual_offset,
                                       int64_t visual_vocab, int32_t* codes, bool* valid, int32_t* n_invalid,
                                       cudaStream_t stream) {
  // n_slots == 0 still writes valid = true, n_invalid = 0 for every sample.
  if (batch <= 0) return cudaSuccess;
  unpack_video_tokens_kernel<<<grid_for(batch), kUnpackThreads, 0, stream>>>(
      responses, mask, batch, seq_len, slot_pos, n_slots < 0 ? 0 : n_slots, visual_offset, visual_vocab, codes,
      valid, n_invalid);
  return cudaGetLastError();
}

cudaError_t launch_codes_to_latents(const int32_t* codes, int64_t n, int64_t hw, const void* table, Dtype dtype,
                                    int64_t k, int64_t c, void* out, bool channels_last, cudaStream_t stream) {
  if (n <= 0 || hw <= 0 || c <= 0) return cudaSuccess;
  if (!dtype_ok(dtype)) return cudaErrorInvalidValue;
  const int esize = dtype_size(dtype);
  if (channels_last) {
    // Each output row is c * esize bytes: copy it with the widest word that divides it and the pointers.
    const int64_t row_bytes = c * esize;
    const uintptr_t align = reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(out);
    int word = 16;
    while (word > esize && (row_bytes % word != 0 || align % word != 0)) word >>= 1;
    const int64_t units = row_bytes / word;
    if (units > INT32_MAX / 2) return cudaErrorInvalidValue;
    const int64_t rows = n * hw;
    const int64_t rows_per_block = units >= 4096 ? 1 : 4096 / units;
    const int64_t n_blocks = ceil_div(rows, rows_per_block);
    const int32_t u32 = static_cast<int32_t>(units), rpb = static_cast<int32_t>(rows_per_block);
    switch (word) {
      case 16:
        gather_rows_kernel<uint4><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
            codes, rows, static_cast<const uint4*>(table), k, u32, rpb, n_blocks, static_cast<uint4*>(out));
        break;
      case 8:
        gather_rows_kernel<uint2><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
            codes, rows, static_cast<const uint2*>(table), k, u32, rpb, n_blocks, static_cast<uint2*>(out));
        break;
      case 4:
        gather_rows_kernel<uint32_t><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
            codes, rows, static_cast<const uint32_t*>(table), k, u32, rpb, n_blocks, static_cast<uint32_t*>(out));
        break;
      default:
        gather_rows_kernel<uint16_t><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
            codes, rows, static_cast<const uint16_t*>(table), k, u32, rpb, n_blocks, static_cast<uint16_t*>(out));
        break;
    }
  } else {
    const int64_t p_blocks = ceil_div(hw, kGatherThreads);
    const int64_t n_blocks = n * p_blocks;
    if (esize == 4) {
      gather_planar_kernel<uint32_t><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
          codes, hw, static_cast<const uint32_t*>(table), k, c, p_blocks, n_blocks, static_cast<uint32_t*>(out));
    } else {
      gather_planar_kernel<uint16_t><<<grid_for(n_blocks), kGatherThreads, 0, stream>>>(
          codes, hw, static_cast<const uint16_t*>(table), k, c, p_blocks, n_blocks, static_cast<uint16_t*>(out));
    }
  }
  return cudaGetLastError();
}

int64_t pixel_metrics_workspace_floats(const PixelMetricsArgs& args) {
  if (args.n_images <= 0) return 1;
  const PmPlan plan = plan_pixel_metrics(args);
  const int64_t n = args.n_images * plan.groups * plan.blocks_per_group * plan.stride;
  return n > 1 ? n : 1;
}

cudaError_t launch_pixel_metrics(const PixelMetricsArgs& args, cudaStream_t stream) {
  if (args.n_images <= 0) return cudaSuccess;
  if (args.frames <= 0 || args.group_size <= 0 || args.channels < 0 || args.height < 0 || args.width < 0)
    return cudaErrorInvalidValue;
  if (!dtype_ok(args.pred_dtype) || !dtype_ok(args.target_dtype)) return cudaErrorInvalidValue;
  if (args.want_ssim && !ssim_geometry_ok(args)) return cudaErrorInvalidValue;
  const PmPlan plan = plan_pixel_metrics(args);
  const int64_t n_blocks = args.n_images * plan.groups * plan.blocks_per_group;
  if (n_blocks > 0) {
    cudaError_t err = cudaSuccess;
    if (plan.ssim) {
      SsimParams sp{};
      sp.pred = args.pred;
      sp.target = args.target;
      sp.frames = args.frames;
      sp.group_size = args.group_size;
      sp.channels = args.channels;
      sp.height = args.height;
      sp.width = args.width;
      sp.nstrip = plan.nstrip;
      sp.nseg = plan.nseg;
      sp.seg_rows = plan.seg_rows;
      sp.n_blocks = n_blocks;
      sp.ws = args.window_size;
      sp.pred_bf16 = args.pred_dtype == Dtype::kBFloat16;
      sp.target_bf16 = args.target_dtype == Dtype::kBFloat16;
      sp.range = args.data_range;
      sp.c1 = args.c1;
      sp.c2 = args.c2;
      for (int u = 0; u < kMaxWindow; ++u) sp.w[u] = u < args.window_size ? args.window[u] : 0.f;
      sp.partials = args.workspace;
      err = launch_ssim(sp, args.pred_dtype, args.target_dtype, stream);
    } else {
      MseParams mp{};
      mp.pred = args.pred;
      mp.target = args.target;
      mp.frames = args.frames;
      mp.group_size = args.group_size;
      mp.chw = args.channels * args.height * args.width;
      mp.nchunk = plan.blocks_per_group;
      mp.n_blocks = n_blocks;
      mp.range = args.data_range;
      mp.partials = args.workspace;
      const bool vec = mp.chw % 8 == 0 && reinterpret_cast<uintptr_t>(args.pred) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.target) % 16 == 0;
      err = with_fmt(args.pred_dtype, [&](auto fp) {
        return with_fmt(args.target_dtype, [&](auto ft) {
          constexpr int kP = decltype(fp)::value, kT = decltype(ft)::value;
          if (vec) {
            mse_mae_kernel<kP, kT, 8><<<grid_for(n_blocks), kMseThreads, 0, stream>>>(mp);
          } else {
            mse_mae_kernel<kP, kT, 1><<<grid_for(n_blocks), kMseThreads, 0, stream>>>(mp);
          }
          return cudaGetLastError();
        });
      });
    }
    if (err != cudaSuccess) return err;
  }
  const double n_elems = static_cast<double>(args.channels * args.height * args.width);
  const double n_positions = args.want_ssim ? static_cast<double>((args.height - args.window_size + 1) *
                                                                  (args.width - args.window_size + 1))
                                            : 1.0;
  constexpr int kFinalizeThreads = 128;
  pixel_metrics_finalize_kernel<<<grid_for(ceil_div(args.n_images, kFinalizeThreads)), kFinalizeThreads, 0,
                                  stream>>>(args.workspace, args.n_images, plan.groups, plan.blocks_per_group,
                                            plan.stride, plan.ssim, n_elems, n_positions,
                                            static_cast<double>(args.data_range), args.out);
  return cudaGetLastError();
}

cudaError_t launch_scatter_sequence_reward(const float* reward, const bool* mask, int64_t batch, int64_t seq_len,
                                           float* out, cudaStream_t stream) {
  if (batch <= 0 || seq_len <= 0) return cudaSuccess;
  scatter_sequence_reward_kernel<<<grid_for(batch), kScatterThreads, 0, stream>>>(reward, mask, batch, seq_len, out);
  return cudaGetLastError();
}

}  // namespace rlvr_fast
