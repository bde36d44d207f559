// CUDA kernel of the fused encoder: the semantics of encode_cpu (see reference.py), with one
// warp per chunk of up to kChunkPixels output pixels of one row, all channels.
//
// Warps work independently (no block-wide barrier), so that while one warp prepares its chunk
// the others keep loads in flight. A warp first computes what its chunk needs: the ChaCha20
// keystream blocks of its mask bits (one block per lane) and the per-term parameters of its
// row (one term per lane), into the warp's part of shared memory. Then it walks the chunk in
// passes of 32 * kPixelsPerThread pixels; in a pass each lane owns kPixelsPerThread pixels
// (32 apart, so that the warp's pixels are adjacent) and accumulates all channels of them,
// kTermsPerGroup terms at a time: the lane's kTermsPerGroup * kPixelsPerThread * C gathers
// are independent loads in flight together. A warp's writes are contiguous for both output
// layouts; the mask bits come from shared memory. The warp of a row's first chunk also mixes
// the row's soft labels when the call asks for them (see load_label). uint8 images take a
// word-wide path (see compute_chunk_words), whose loads can go through shared memory, in
// blocks or pipelined (see plan_stage; INSTAHIDE_CUDA_LOADS). A warp's whole work is
// encode_chunks, which the host emulation in tests runs as is.
#include "encode_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "chacha20.h"
#include "encode.h"
#include "platform.h"

namespace instahide {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Tuning (measured on an H200 and an H100, benchmarks/RESULTS.md): pixels per lane and pass
// (byte path), and terms whose loads are issued together; more of either puts more bytes in
// flight per lane at the cost of registers. Four blocks per SM cap the kernel at 64 registers
// (8 bytes spilled), 32 warps per SM in all: more loads in flight per SM.
#ifndef INSTAHIDE_CUDA_PIXELS_PER_LANE
#define INSTAHIDE_CUDA_PIXELS_PER_LANE 2
#endif
#ifndef INSTAHIDE_CUDA_TERMS_PER_GROUP
#define INSTAHIDE_CUDA_TERMS_PER_GROUP 2
#endif
#ifndef INSTAHIDE_CUDA_MIN_BLOCKS  // blocks per SM the register allocation must allow
#define INSTAHIDE_CUDA_MIN_BLOCKS 4
#endif
#ifndef INSTAHIDE_CUDA_WORD_LOADS  // the word-wide path for uint8 images (0: byte loads only)
#define INSTAHIDE_CUDA_WORD_LOADS 1
#endif
constexpr int kPixelsPerThread = INSTAHIDE_CUDA_PIXELS_PER_LANE;  // per lane and pass
constexpr int kTermsPerGroup = INSTAHIDE_CUDA_TERMS_PER_GROUP;
static_assert(kTermsPerGroup == 1 || kTermsPerGroup == 2 || kTermsPerGroup == 4, "1, 2 or 4 terms per group");
constexpr int kPassPixels = 32 * kPixelsPerThread;
constexpr int kChunkPixels = 1024;   // a CIFAR image; larger images are cut into such chunks
// A channel's kChunkPixels mask bits start anywhere in a 512-bit ChaCha20 block, so they
// span at most this many blocks.
constexpr int kBlocksPerChannel = (kChunkPixels + 511) / 512 + 1;
constexpr int kWordsPerChannel = 16 * kBlocksPerChannel;
static_assert(kBlocksPerChannel * kMaxChannels <= 32, "keystream blocks are one per lane");
static_assert(kMaxTerms <= 32, "terms are one per lane");
static_assert(kChunkPixels % kPassPixels == 0, "a chunk is whole passes");

// `#pragma unroll` in device code only: the host pass (the emulation in tests) would warn.
#if defined(__CUDA_ARCH__)
#define INSTAHIDE_UNROLL _Pragma("unroll")
#else
#define INSTAHIDE_UNROLL
#endif

// Host and device versions of the few intrinsics (host: the emulation in tests).
INSTAHIDE_HD uint32_t mul_hi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

template <typename T>
INSTAHIDE_HD T load_readonly(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// __syncwarp on the device. The host pass (the emulation in tests) runs a warp's lanes as
// fibers that switch to each other here, so that code between two syncs runs lane by lane.
[[maybe_unused]] void (*host_warp_sync)() = nullptr;
[[maybe_unused]] bool host_stage_fault = false;   // a lane read a staged word outside its term's range
[[maybe_unused]] int64_t host_staged_blocks = 0;  // blocks of passes that took the staged loads
// The emulation's asynchronous copies (see copy16_async): where set, a copy lands only at the
// wait that covers its group, as on the device. Null: copies land at once.
[[maybe_unused]] void (*host_copy_async)(uint32_t* shared_dst, const uint32_t* global_src) = nullptr;
[[maybe_unused]] void (*host_commit_copies)() = nullptr;
[[maybe_unused]] void (*host_wait_copies)(int pending_groups) = nullptr;
[[maybe_unused]] void (*host_prefetch)(const char* address) = nullptr;  // the emulation checks each
INSTAHIDE_HD void warp_sync() {
#if defined(__CUDA_ARCH__)
  __syncwarp();
#else
  if (host_warp_sync) host_warp_sync();
#endif
}

INSTAHIDE_HD uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

INSTAHIDE_HD float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// n / d for n, d < 2^31 by a multiply-high and a shift (d fixed per launch).
struct FastDiv {
  uint32_t magic, shift;
  INSTAHIDE_HD uint32_t div(uint32_t n) const { return (mul_hi(n, magic) + n) >> shift; }
};

FastDiv make_fast_div(uint32_t d) {
  uint32_t shift = 0;
  while ((uint64_t(1) << shift) < d) ++shift;
  const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1;
  return {uint32_t(magic), shift};
}

struct Source {
  const char* data;
  int64_t count;
  int64_t image_bytes;  // stride_n in bytes
  int64_t stride_c, stride_h, stride_w;  // elements
  uint32_t height, width;
  const int64_t* image_offset;  // packed images of their own sizes (device arrays), else null
  const int32_t* image_size;
  bool u8;
  float scale[kMaxChannels], shift[kMaxChannels];
};

// How the word-wide path loads (INSTAHIDE_CUDA_LOADS; one kernel each, so that one path's
// state costs the others no registers): see word_pass, plan_stage and prefetch_block.
enum class Loads { kDirect, kStaged, kPipelined, kPrefetch };

// Everything the kernel reads besides device memory (passed by value).
struct Params {
  Source src[2];
  const int64_t* row_id;
  bool tables_by_row_id;  // the term tables hold every epoch row: row r's at row_id[r]
  const int64_t* index;
  const float* lam;
  const int32_t* offset;
  const uint8_t* flip;
  void* out;
  ChaChaInput key;  // mask key and epoch; the row id goes into nonce[1], nonce[2] per row
  SignMode sign;
  int k, private_terms, C;
  uint32_t H, W, HW;  // output window; C * H * W < 2^31
  FastDiv div_w;
  int64_t chunks_per_row, items;  // items = rows * chunks_per_row
  bool words;    // host only: the launch takes the word-wide path (see compute_chunk_words)
  Loads loads;   // host only: ... and loads this way
  int stage_passes;  // passes per staged block; with kPrefetch, passes ahead
  // Soft labels, mixed by the warp of each row's first chunk (labels null: none).
  const int64_t* labels;
  int64_t label_count, classes;
  bool renormalize;
  float* soft;
};

// One term of the block's row, in shared memory.
struct Term {
  const char* image;  // null, and height = width = 0, where the index is out of range
  int64_t stride_c, stride_h, stride_w;
  int32_t dy, dx;
  uint32_t height, width;
  bool flip, u8;
  bool planar;  // stride_w == 1: each channel's row is contiguous (else channels-last pixels)
  float alpha[kMaxChannels];      // lam * scale[c]
  float lam_shift[kMaxChannels];  // lam * shift[c]
  float lam;
  int64_t label_index;  // the image's entry in the labels: private terms of valid images, else -1
  int32_t label;        // its class id, -1 if out of range (set after the chunk's passes)
};

struct Shared {
  Term term[kMaxTerms];
  uint32_t keystream[kMaxChannels * kWordsPerChannel];  // channel c's words at c * kWordsPerChannel
  uint32_t first_block[kMaxChannels];                   // the block of channel c's first word
};

// The mask's keystream of the chunk (row id `id`, pixels [p0, p1)), one ChaCha20 block per lane.
INSTAHIDE_HD void setup_keystream(const Params& P, Shared& sh, int lane, uint64_t id, uint32_t p0, uint32_t p1) {
  if (P.sign != SignMode::kFlip) return;
  // Mask bit j = c*HW + p: channel c needs the bits [c*HW + p0, c*HW + p1), 512 per block.
  int b = lane;
  for (int c = 0; c < P.C; ++c) {
    const uint32_t first = (uint32_t(c) * P.HW + p0) >> 9;
    const uint32_t last = (uint32_t(c) * P.HW + p1 - 1) >> 9;
    const int n = int(last - first + 1);
    if (lane == 0) sh.first_block[c] = first;
    if (b >= 0 && b < n) {
      ChaChaInput in = P.key;
      in.nonce[1] = uint32_t(id);
      in.nonce[2] = uint32_t(id >> 32);
      uint32_t words[16];
      chacha20_block(in, first + uint32_t(b), words);
      uint32_t* dst = sh.keystream + c * kWordsPerChannel + b * 16;
      for (int i = 0; i < 16; ++i) dst[i] = words[i];
    }
    b -= n;
  }
}

// Phase 1 of a chunk (row, pixels [p0, p1)), lane `lane` of its warp: keystream and terms
// into the warp's `sh`. The term's table entries are loaded first, so that they are in
// flight while the keystream is computed; with kTermsFirst the terms are written (and the
// warp synced) before the keystream, and after_terms() runs between the two: the pipelined
// loads issue the chunk's first copies there (and the prefetching loads ask L2 for its first
// passes), so that they are in flight instead.
template <bool kTermsFirst, typename AfterTerms>
INSTAHIDE_HD void setup_chunk(const Params& P, Shared& sh, int lane, int64_t row, uint32_t p0, uint32_t p1,
                              const AfterTerms& after_terms) {
  const int t = lane;
  const bool has_term = t < P.k;
  const uint64_t id = uint64_t(P.row_id ? P.row_id[row] : 0);
  const int64_t at = (P.tables_by_row_id ? int64_t(id) : row) * P.k + t;
  const int64_t idx = has_term ? P.index[at] : -1;
  const float lam = has_term ? P.lam[at] : 0.0f;
  const int32_t dy = has_term ? P.offset[2 * at] : 0, dx = has_term ? P.offset[2 * at + 1] : 0;
  const bool flip = has_term && P.flip[at] != 0;
  if constexpr (!kTermsFirst) setup_keystream(P, sh, lane, id, p0, p1);
  if (has_term) {
    const Source& s = P.src[t < P.private_terms ? 0 : 1];
    Term& term = sh.term[t];
    const bool valid = idx >= 0 && idx < s.count;
    const bool packed = s.image_offset != nullptr;
    const uint32_t height = packed && valid ? uint32_t(s.image_size[2 * idx]) : s.height;
    const uint32_t width = packed && valid ? uint32_t(s.image_size[2 * idx + 1]) : s.width;
    term.image = !valid ? nullptr : packed ? s.data + s.image_offset[idx] * (s.u8 ? 1 : 4) : s.data + idx * s.image_bytes;
    term.stride_c = s.stride_c;
    term.stride_h = packed ? int64_t(width) * s.stride_w : s.stride_h;
    term.stride_w = s.stride_w;
    term.dy = dy;
    term.dx = dx;
    term.height = valid ? height : 0;  // no pixel of an invalid image is read
    term.width = valid ? width : 0;
    term.flip = flip;
    term.u8 = s.u8;
    term.planar = s.stride_w == 1;
    for (int c = 0; c < kMaxChannels; ++c) {
      term.alpha[c] = c < P.C ? lam * s.scale[c] : 0.0f;
      term.lam_shift[c] = c < P.C ? lam * s.shift[c] : 0.0f;
    }
    term.lam = lam;
    term.label_index = t < P.private_terms && idx >= 0 && idx < P.label_count ? idx : -1;
  }
  if constexpr (kTermsFirst) {
    warp_sync();  // the terms are written
    after_terms();
    setup_keystream(P, sh, lane, id, p0, p1);
  }
}

// ---- Soft labels, by the warp of each row's first chunk, in three steps around the chunk's
// passes: each lane of a private term loads its class id before the passes (so that the
// load's latency hides behind them), puts it into shared memory after them, and then the
// lanes write the row's classes lane, lane + 32, ... The sums are mix_labels_cpu's (double,
// private terms in order, one rounding), so both agree bit for bit; a class id out of range
// adds to no class.
INSTAHIDE_HD bool mixes_labels(const Params& P, uint32_t p0) { return P.labels != nullptr && p0 == 0; }

// (The class id is kept as int32, one register across the passes: classes < 2^31.)
INSTAHIDE_HD int32_t load_label(const Params& P, const Shared& sh, int lane, uint32_t p0) {
  if (!mixes_labels(P, p0) || lane >= P.private_terms) return -1;
  const int64_t image = sh.term[lane].label_index;
  const int64_t label = image >= 0 ? load_readonly(P.labels + image) : -1;
  return label >= 0 && label < P.classes ? int32_t(label) : -1;
}

INSTAHIDE_HD void keep_label(const Params& P, Shared& sh, int lane, uint32_t p0, int32_t label) {
  if (mixes_labels(P, p0) && lane < P.private_terms) sh.term[lane].label = label;
}

INSTAHIDE_HD void write_labels(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t p0) {
  if (!mixes_labels(P, p0)) return;
  for (int64_t c = lane; c < P.classes; c += 32) {
    double sum = 0.0;
    float lam_sum = 0.0f;
    for (int t = 0; t < P.private_terms; ++t) {
      const float lam = sh.term[t].lam;
      lam_sum += lam;
      if (sh.term[t].label == c) sum += double(lam);
    }
    P.soft[row * P.classes + c] = P.renormalize ? float(sum) / lam_sum : float(sum);
  }
}

// Exact: a uint8 in the low mantissa bits of 2^23 (an OR and an add, both full rate, where
// an integer-to-float conversion runs at a quarter of it).
INSTAHIDE_HD float to_float(uint8_t v) { return float_of(0x4b000000u | v) - 8388608.0f; }
INSTAHIDE_HD float to_float(float v) { return v; }

// acc[i][c] += alpha[c] * pixel (c, y[i] + dy, x'[i] + dx) for the N terms at `terms`, in
// order, where a pixel outside its image reads 0. kC: the channel count, 0 where it is read
// from P at run time. U: unsigned offset arithmetic within an image (32 bits where every
// offset fits in int32). All loads of the N terms come first, so that they are in flight
// together: the loads of one term alone do not cover the memory latency.
template <int kC, typename T, typename U, int N>
INSTAHIDE_HD void gather_terms(const Params& P, const Term* terms, const uint32_t (&y)[kPixelsPerThread],
                               const uint32_t (&x)[kPixelsPerThread], const bool (&live)[kPixelsPerThread],
                               float (&acc)[kPixelsPerThread][kMaxChannels]) {
  using S = typename std::conditional<sizeof(U) == 4, int32_t, int64_t>::type;
  const int C = kC ? kC : P.C;
  float v[N][kPixelsPerThread][kMaxChannels];
  INSTAHIDE_UNROLL
  for (int n = 0; n < N; ++n) {
    // The term's fields once, in registers; the pixel loop is then branch-free, its loads
    // predicated on `in`.
    const Term& term = terms[n];
    const T* image = reinterpret_cast<const T*>(term.image);
    const U stride_c = U(term.stride_c), stride_h = U(term.stride_h), stride_w = U(term.stride_w);
    const uint32_t dy = uint32_t(term.dy), dx = uint32_t(term.dx), height = term.height, width = term.width;
    const bool flip = term.flip;
    INSTAHIDE_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i) {
      // Unsigned wrap-around makes one compare test both ends: y + dy < 0 wraps above height.
      const uint32_t ys = y[i] + dy;
      const uint32_t xs = (flip ? P.W - 1 - x[i] : x[i]) + dx;
      const bool in = live[i] & (ys < height) & (xs < width);
      const U at = U(ys) * stride_h + U(xs) * stride_w;  // wraps harmlessly where !in
      INSTAHIDE_UNROLL
      for (int c = 0; c < kMaxChannels; ++c) {
        v[n][i][c] = 0.0f;
        if (c < C) v[n][i][c] = to_float(in ? load_readonly(image + S(at + U(c) * stride_c)) : T(0));
      }
    }
  }
  INSTAHIDE_UNROLL
  for (int n = 0; n < N; ++n)
    INSTAHIDE_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i)
      INSTAHIDE_UNROLL
      for (int c = 0; c < kMaxChannels; ++c)
        if (c < C) acc[i][c] = fmaf(terms[n].alpha[c], v[n][i][c], acc[i][c]);
}

// All k terms, of one pixel type T, kTermsPerGroup at a time (then 2, then 1 for the rest).
template <int kC, typename T, typename U>
INSTAHIDE_HD void gather_all(const Params& P, const Shared& sh, const uint32_t (&y)[kPixelsPerThread],
                             const uint32_t (&x)[kPixelsPerThread], const bool (&live)[kPixelsPerThread],
                             float (&acc)[kPixelsPerThread][kMaxChannels]) {
  int t = 0;
  for (; t + kTermsPerGroup <= P.k; t += kTermsPerGroup)
    gather_terms<kC, T, U, kTermsPerGroup>(P, sh.term + t, y, x, live, acc);
  if (kTermsPerGroup > 2 && t + 2 <= P.k) {
    gather_terms<kC, T, U, 2>(P, sh.term + t, y, x, live, acc);
    t += 2;
  }
  if (kTermsPerGroup > 1 && t < P.k) gather_terms<kC, T, U, 1>(P, sh.term + t, y, x, live, acc);
}

template <typename Out>
INSTAHIDE_HD Out convert(float v);
template <>
INSTAHIDE_HD float convert<float>(float v) { return v; }
template <>
INSTAHIDE_HD __half convert<__half>(float v) { return __float2half_rn(v); }
template <>
INSTAHIDE_HD __nv_bfloat16 convert<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Signs, converts and writes the thread's pixels (one copy per sign mode keeps the branch on
// it out of the per-element code).
template <typename Out, bool kChannelsLast, int kC, SignMode kSign>
INSTAHIDE_HD void store_pixels(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t q,
                               const bool (&live)[kPixelsPerThread],
                               const float (&acc)[kPixelsPerThread][kMaxChannels]) {
  const int C = kC ? kC : P.C;
  // Keystream word of mask bit j = c*HW + p, for channel c: ks[c] + j / 32.
  const uint32_t* ks[kMaxChannels];
  INSTAHIDE_UNROLL
  for (int c = 0; c < kMaxChannels; ++c)
    ks[c] = kSign == SignMode::kFlip && c < C ? sh.keystream + c * kWordsPerChannel - sh.first_block[c] * 16 : nullptr;
  Out* out = static_cast<Out*>(P.out) + row * int64_t(C) * P.HW;
  INSTAHIDE_UNROLL
  for (int i = 0; i < kPixelsPerThread; ++i) {
    if (!live[i]) continue;
    const uint32_t p = q + uint32_t(i * 32 + lane);
    Out* o = out + (kChannelsLast ? p * uint32_t(C) : p);  // channel 0 of pixel p
    INSTAHIDE_UNROLL
    for (int c = 0; c < kMaxChannels; ++c) {
      if (c >= C) break;
      uint32_t bits = bits_of(acc[i][c]);
      if (kSign == SignMode::kFlip) {
        // Bit j of the keystream is bit j % 32 of its little-endian word j / 32.
        const uint32_t j = uint32_t(c) * P.HW + p;
        bits ^= ((ks[c][j >> 5] >> (j & 31)) & 1u) << 31;
      } else if (kSign == SignMode::kAbs) {
        bits &= 0x7fffffffu;
      }
      o[kChannelsLast ? c : c * int64_t(P.HW)] = convert<Out>(float_of(bits));
    }
  }
}

// Phase 2 of a chunk, lane `lane`: mixes, signs and writes its pixels q + i * 32 + lane of
// each pass q.
template <typename Out, bool kChannelsLast, typename U, int kC>
INSTAHIDE_HD void compute_chunk(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t p0, uint32_t p1) {
  // Padding reads 0, which normalizes to -shift: every element starts from -sum_t lam*shift[c].
  float beta[kMaxChannels] = {};
  for (int t = 0; t < P.k; ++t) {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kMaxChannels; ++c) beta[c] += sh.term[t].lam_shift[c];
  }
  const bool one_source = P.private_terms == P.k;
  const bool all_u8 = P.src[0].u8 && (one_source || P.src[1].u8);
  const bool all_float = !P.src[0].u8 && (one_source || !P.src[1].u8);

  for (uint32_t q = p0; q < p1; q += kPassPixels) {
    uint32_t y[kPixelsPerThread], x[kPixelsPerThread];
    bool live[kPixelsPerThread];
    float acc[kPixelsPerThread][kMaxChannels];
    INSTAHIDE_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i) {
      const uint32_t p = q + uint32_t(i * 32 + lane);
      live[i] = p < p1;
      y[i] = P.div_w.div(p);
      x[i] = p - y[i] * P.W;
      INSTAHIDE_UNROLL
      for (int c = 0; c < kMaxChannels; ++c) acc[i][c] = -beta[c];
    }
    // Terms of one pixel type go two at a time (see gather_terms); mixed ones one at a time.
    if (all_u8) {
      gather_all<kC, uint8_t, U>(P, sh, y, x, live, acc);
    } else if (all_float) {
      gather_all<kC, float, U>(P, sh, y, x, live, acc);
    } else {
      for (int t = 0; t < P.k; ++t) {
        if (sh.term[t].u8)
          gather_terms<kC, uint8_t, U, 1>(P, sh.term + t, y, x, live, acc);
        else
          gather_terms<kC, float, U, 1>(P, sh.term + t, y, x, live, acc);
      }
    }

    switch (P.sign) {
      case SignMode::kFlip: store_pixels<Out, kChannelsLast, kC, SignMode::kFlip>(P, sh, lane, row, q, live, acc); break;
      case SignMode::kAbs: store_pixels<Out, kChannelsLast, kC, SignMode::kAbs>(P, sh, lane, row, q, live, acc); break;
      default: store_pixels<Out, kChannelsLast, kC, SignMode::kNone>(P, sh, lane, row, q, live, acc); break;
    }
  }
}

// ---- The word-wide path: uint8 images, output rows of a multiple of 4 pixels. A lane owns
// 4 adjacent pixels of an output row, whose sources are 4 adjacent pixels of a source row
// (in reverse order where flipped): it reads them as whole 32-bit words (C + 1 words
// channels-last, 2 per channel planar) at any byte alignment, and takes the bytes apart with
// funnel shifts and byte permutes, instead of one byte load per element. Words are clamped
// to the source row, so that a lane whose pixels partly fall outside the image still reads
// only words that hold a byte of the row; the bytes of outside pixels are then replaced by 0.
constexpr int kWordPixels = 4;  // per lane and pass
constexpr int kWordPassPixels = 32 * kWordPixels;
static_assert(kChunkPixels % kWordPassPixels == 0, "a chunk is whole passes");

INSTAHIDE_HD uint32_t funnel_shift_right(uint32_t lo, uint32_t hi, uint32_t shift) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, shift);
#else
  return shift == 0 ? lo : (lo >> shift) | (hi << (32 - shift));
#endif
}

// Byte b of w as a float: the byte in the low mantissa bits of 2^23 (one byte permute).
template <int b>
INSTAHIDE_HD float byte_to_float(uint32_t w) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7540 | b)) - 8388608.0f;
#else
  return float_of(0x4b000000u | ((w >> (8 * b)) & 0xffu)) - 8388608.0f;
#endif
}

INSTAHIDE_HD int32_t clamp_to(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : v > hi ? hi : v; }

// The term's image as words from its 4-aligned base (byte offsets below count from there).
INSTAHIDE_HD const uint32_t* aligned_words(const Term& term) {
  return reinterpret_cast<const uint32_t*>(term.image - (reinterpret_cast<uintptr_t>(term.image) & 3u));
}

// The words of term `term` for the lane's pixels x..x+3 of output row y: word[m] and, per
// run of bytes (one channels-last, one per channel planar), its byte shift; in[i]: pixel i
// is inside the image. fetch(at) reads the image's word at byte offset `at` (from the
// image's 4-aligned base): from global memory, or from the warp's staged copy.
template <int kC, typename Fetch>
INSTAHIDE_HD void load_term_words(const Params& P, const Term& term, uint32_t y, uint32_t x, bool live,
                                  const Fetch& fetch, uint32_t (&word)[2 * kC], uint32_t (&shift)[kC],
                                  bool (&in)[kWordPixels]) {
  const uint32_t ys = y + uint32_t(term.dy);
  const bool row_in = live & (ys < term.height);
  // Source columns xlo..xlo+3 (unsigned wrap-around: one compare tests both ends).
  const uint32_t xlo = (term.flip ? P.W - kWordPixels - x : x) + uint32_t(term.dx);
  INSTAHIDE_UNROLL
  for (int i = 0; i < kWordPixels; ++i) in[i] = row_in & (xlo + uint32_t(term.flip ? 3 - i : i) < term.width);
  // Byte offsets from the image's 4-aligned base; those of pixels inside the image are exact
  // in 32 bits (the launch is not `wide`), the others are clamped before use.
  const uint32_t misalign = uint32_t(reinterpret_cast<uintptr_t>(term.image)) & 3u;
  const uint32_t row = misalign + ys * uint32_t(term.stride_h);
  auto load_run = [&](uint32_t row_first, uint32_t row_bytes, uint32_t first, int words, uint32_t* dst) {
    const int32_t lo = int32_t(row_first & ~3u), hi = int32_t((row_first + row_bytes - 1) & ~3u);
    INSTAHIDE_UNROLL
    for (int m = 0; m < words; ++m) {
      const int32_t at = clamp_to(int32_t((first & ~3u) + 4u * uint32_t(m)), lo, hi);
      dst[m] = row_in ? fetch(at) : 0u;
    }
  };
  if (term.planar) {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kC; ++c) {
      const uint32_t row_c = row + uint32_t(c) * uint32_t(term.stride_c), first = row_c + xlo;
      shift[c] = (first & 3u) * 8u;
      load_run(row_c, term.width, first, 2, word + 2 * c);
    }
  } else {
    const uint32_t first = row + xlo * uint32_t(kC);
    shift[0] = (first & 3u) * 8u;
    load_run(row, term.width * uint32_t(kC), first, kC + 1, word);
  }
}

// acc[i][c] += alpha[c] * pixel i, channel c of the term's words.
template <int kC, bool kFlip>
INSTAHIDE_HD void add_term_words(const Term& term, const uint32_t (&word)[2 * kC], const uint32_t (&shift)[kC],
                                 const bool (&in)[kWordPixels], float (&acc)[kWordPixels][kMaxChannels]) {
  if (term.planar) {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kC; ++c) {
      const uint32_t run = funnel_shift_right(word[2 * c], word[2 * c + 1], shift[c]);
      const float v[kWordPixels] = {byte_to_float<kFlip ? 3 : 0>(run), byte_to_float<kFlip ? 2 : 1>(run),
                                    byte_to_float<kFlip ? 1 : 2>(run), byte_to_float<kFlip ? 0 : 3>(run)};
      INSTAHIDE_UNROLL
      for (int i = 0; i < kWordPixels; ++i) acc[i][c] = fmaf(term.alpha[c], in[i] ? v[i] : 0.0f, acc[i][c]);
    }
  } else {
    uint32_t run[kC];  // the 4 * kC bytes of the 4 source pixels, 4-aligned
    INSTAHIDE_UNROLL
    for (int m = 0; m < kC; ++m) run[m] = funnel_shift_right(word[m], word[m + 1], shift[0]);
    INSTAHIDE_UNROLL
    for (int i = 0; i < kWordPixels; ++i) {
      INSTAHIDE_UNROLL
      for (int c = 0; c < kC; ++c) {
        const int j = (kFlip ? kWordPixels - 1 - i : i) * kC + c;  // byte j of the run
        float v;
        switch (j & 3) {
          case 0: v = byte_to_float<0>(run[j >> 2]); break;
          case 1: v = byte_to_float<1>(run[j >> 2]); break;
          case 2: v = byte_to_float<2>(run[j >> 2]); break;
          default: v = byte_to_float<3>(run[j >> 2]); break;
        }
        acc[i][c] = fmaf(term.alpha[c], in[i] ? v : 0.0f, acc[i][c]);
      }
    }
  }
}

// ---- Staged loads (INSTAHIDE_CUDA_LOADS=staged[:passes]), for channels-last images: the
// lanes' words of a term overlap (a lane reads C + 1 words for its 4 * C bytes, and its
// neighbour starts inside its last one), so that each of the warp's C + 1 word-load
// instructions touches every sector of the pass's bytes: C + 1 requests per sector, unless L1
// merges them (which a GPU run of both paths tells). Staged, the warp first copies the bytes
// that a block of `passes` passes needs of each of the k terms (the rows of the block, from
// the first needed column of the first row to the last of the last row) into shared memory,
// all at once, with asynchronous 16-byte copies that go straight from L2 to shared memory (no
// registers); the lanes then read their overlapping words from there. A block falls back to
// direct loads where a term's range does not fit its share of the buffer (far-apart rows,
// more than kStageTerms terms, planar images: two words per lane and channel, less overlap).
constexpr int kStageTerms = 6;    // terms a staged block holds at most (cross mode 2 + 4)
constexpr int kStageWords = 800;  // per warp, shared by the block's terms: 4 terms of 2 CIFAR passes
constexpr int kMaxStagePasses = 4;

// A term's staged bytes: the words first .. first + words - 1 from the image's 4-aligned base
// are in its share of the buffer from word `align` on, so that the share starts on a 16-byte
// boundary of the source (for the 16-byte copies). words = 0: the block reads no byte of it.
struct StagedRange {
  int32_t first, words, align;
  int32_t staged;  // 0: the range does not fit the term's share
};

// A warp's staging area: one buffer of kStageWords words, or two of half as many where
// pipelined (range[b]: buffer b's terms).
struct __align__(16) Staging {
  uint32_t words[kStageWords];
  StagedRange range[2][kStageTerms];
};

// One buffer of a warp's staging: term t's share is words[t * share .. (t + 1) * share)
// (share = 0: a block of k terms is never staged).
struct StageBuffer {
  uint32_t* words;
  StagedRange* range;
  int share;
};

INSTAHIDE_HD int stage_share(int k, bool pipelined) {
  const int words = pipelined ? kStageWords / 2 : kStageWords;
  return k <= kStageTerms ? words / k / 4 * 4 : 0;
}

// Buffer b (b = 1 only where pipelined, in the staging's second half).
INSTAHIDE_HD StageBuffer stage_buffer(Staging& stage, int b, int share) {
  return {stage.words + b * (kStageWords / 2), stage.range[b], share};
}

// The bytes lo .. hi (offsets from the image's 4-aligned base) that hold every byte the
// pixels q .. q_last of a block of passes read of channels-last term `term`; false where they
// read none of it.
template <int kC>
INSTAHIDE_HD bool block_bytes(const Params& P, const Term& term, uint32_t q, uint32_t q_last, int32_t& lo,
                              int32_t& hi) {
  const uint32_t ya = P.div_w.div(q), yb = P.div_w.div(q_last);
  const int32_t ra = int32_t(ya) + term.dy, rb = int32_t(yb) + term.dy;
  const int32_t height = int32_t(term.height), width = int32_t(term.width), W = int32_t(P.W);
  if (rb < 0 || ra >= height || width == 0) return false;  // no lane reads the image
  const int32_t sa = ra < 0 ? 0 : ra, sb = rb >= height ? height - 1 : rb;
  // Output columns of the block's pixels: the block's own where it lies in one row, else all.
  const int32_t xa = ya == yb ? int32_t(q - ya * P.W) : 0, xb = ya == yb ? int32_t(q_last - yb * P.W) : W - 1;
  const int32_t cmin = clamp_to(term.flip ? W - 1 - xb + term.dx : xa + term.dx, 0, width - 1);
  const int32_t cmax = clamp_to(term.flip ? W - 1 - xa + term.dx : xb + term.dx, 0, width - 1);
  // Rows sa .. sb in memory order either way (negative row strides); the rows between lie
  // between them, so that the one range covers their columns too.
  const uint32_t image = uint32_t(reinterpret_cast<uintptr_t>(term.image));
  const int32_t row_a = int32_t(image & 3u) + sa * int32_t(term.stride_h);
  const int32_t row_b = int32_t(image & 3u) + sb * int32_t(term.stride_h);
  lo = (row_a < row_b ? row_a : row_b) + cmin * kC;
  hi = (row_a < row_b ? row_b : row_a) + cmax * kC + kC - 1;
  return true;
}

// The staging plan of term `term` for the pixels q .. q_last of a block of passes.
template <int kC>
INSTAHIDE_HD StagedRange plan_stage(const Params& P, const Term& term, uint32_t q, uint32_t q_last, int share) {
  StagedRange st = {0, 0, 0, 0};
  if (term.planar) return st;
  st.staged = 1;
  int32_t lo, hi;
  if (!block_bytes<kC>(P, term, q, q_last, lo, hi)) return st;
  const uint32_t image = uint32_t(reinterpret_cast<uintptr_t>(term.image));
  st.first = lo >> 2;
  st.words = (hi >> 2) - st.first + 1;
  st.align = int32_t(((image >> 2) + uint32_t(st.first)) & 3u);
  st.staged = st.align + st.words <= share;
  return st;
}

// ---- L2 prefetch (INSTAHIDE_CUDA_LOADS=prefetch[:N]): direct loads, but the bytes of the
// pass N passes ahead are asked into L2 first (no registers or shared memory held), so that
// a pass's loads wait for L2 rather than DRAM; a chunk's first N passes are asked for before
// its keystream is computed.
INSTAHIDE_HD void prefetch_l2(const char* address) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(address));
#else
  if (host_prefetch) host_prefetch(address);
#endif
}

// Lane t < k: asks L2 for the lines of the bytes term t's pixels q .. q_last read (channels-
// last images; each address lies in the image, in a line of the range).
template <int kC>
INSTAHIDE_HD void prefetch_block(const Params& P, const Shared& sh, int lane, uint32_t q, uint32_t q_last) {
  if (lane >= P.k || sh.term[lane].planar) return;
  const Term& term = sh.term[lane];
  int32_t lo, hi;
  if (!block_bytes<kC>(P, term, q, q_last, lo, hi)) return;
  const char* base = reinterpret_cast<const char*>(aligned_words(term));
  constexpr int32_t kLine = 128;
  const int32_t in_line = int32_t((reinterpret_cast<uintptr_t>(base) + uint32_t(lo)) & (kLine - 1));
  for (int32_t at = lo - in_line; at <= hi; at += kLine) prefetch_l2(base + (at < lo ? lo : at));
}

// Asynchronous 16-byte copy from global to shared memory (sm_80+; elsewhere a plain copy).
// A lane's copies form groups (commit_async_copies); wait_async_copies<n> waits for all but
// the lane's n most recent groups, and a warp_sync after it shows them to the other lanes.
INSTAHIDE_HD void copy16_async(uint32_t* shared_dst, const uint32_t* global_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
#elif defined(__CUDA_ARCH__)
  memcpy(shared_dst, global_src, 16);
#else
  if (host_copy_async) host_copy_async(shared_dst, global_src);
  else memcpy(shared_dst, global_src, 16);
#endif
}

INSTAHIDE_HD void commit_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
  if (host_commit_copies) host_commit_copies();
#endif
}

template <int kPendingGroups>
INSTAHIDE_HD void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPendingGroups) : "memory");
#elif !defined(__CUDA_ARCH__)
  if (host_wait_copies) host_wait_copies(kPendingGroups);
#endif
}

// Copies a term's staged range to `share` in 16-byte pieces, lane, lane + 32, ... Each piece
// is 16-aligned in the source and holds at least one byte of the range, so that it lies in
// the image's pages (like the word loads, it may read up to 15 bytes around the range).
INSTAHIDE_HD void stage_term(const Term& term, const StagedRange& st, int lane, uint32_t* share) {
  const uint32_t* base = aligned_words(term);
  if (st.words == 0) return;
  for (int piece = lane; 4 * piece < st.align + st.words; piece += 32)
    copy16_async(share + 4 * piece, base + st.first - st.align + 4 * piece);
}

// Issues the copies of the k terms' bytes of the pixels q .. q_last (a block of passes) into
// `buf`, all in flight together, as one group of each lane's copies; false (the group is
// empty) where a term's range does not fit its share. The block may read `buf` after
// wait_async_copies covers the group and a warp_sync. All lanes of the warp call this (live
// or not): it syncs the warp.
template <int kC>
INSTAHIDE_HD bool issue_stage(const Params& P, const Shared& sh, const StageBuffer& buf, int lane, uint32_t q,
                              uint32_t q_last) {
  if (buf.share == 0) return false;  // more terms than a staging holds (the same for the whole warp)
  warp_sync();  // every lane is done reading the buffer's previous block
  if (lane < P.k) buf.range[lane] = plan_stage<kC>(P, sh.term[lane], q, q_last, buf.share);
  warp_sync();
  bool all = true;
  for (int t = 0; t < P.k; ++t) all &= buf.range[t].staged != 0;
  if (all) {
    for (int t = 0; t < P.k; ++t) stage_term(sh.term[t], buf.range[t], lane, buf.words + t * buf.share);
  }
  commit_async_copies();
#if !defined(__CUDA_ARCH__)
  host_staged_blocks += all && lane == 0;
#endif
  return all;
}

// acc += the N terms' words (after they are loaded).
template <int kC, int N>
INSTAHIDE_HD void add_terms_words(const Term* terms, const uint32_t (&word)[N][2 * kC], const uint32_t (&shift)[N][kC],
                                  const bool (&in)[N][kWordPixels], float (&acc)[kWordPixels][kMaxChannels]) {
  INSTAHIDE_UNROLL
  for (int n = 0; n < N; ++n) {
    if (terms[n].flip)  // the same for every lane of the warp (one row)
      add_term_words<kC, true>(terms[n], word[n], shift[n], in[n], acc);
    else
      add_term_words<kC, false>(terms[n], word[n], shift[n], in[n], acc);
  }
}

// The N terms t0 .. t0 + N - 1: all their loads first, so that they are in flight together,
// then the arithmetic. kFromStage: the words come from the staging buffer `buf`, else from
// global memory.
template <int kC, int N, bool kFromStage>
INSTAHIDE_HD void gather_terms_words(const Params& P, const Shared& sh, int t0, const StageBuffer& buf, uint32_t y,
                                     uint32_t x, bool live, float (&acc)[kWordPixels][kMaxChannels]) {
  const Term* terms = sh.term + t0;
  uint32_t word[N][2 * kC], shift[N][kC];
  bool in[N][kWordPixels];
  INSTAHIDE_UNROLL
  for (int n = 0; n < N; ++n) {
    const Term& term = terms[n];
    if constexpr (kFromStage) {
      const StagedRange range = buf.range[t0 + n];
      const uint32_t* words = buf.words + (t0 + n) * buf.share;
      load_term_words<kC>(P, term, y, x, live,
                          [&](int32_t at) {
                            // A run's last word lies past the range where the run starts on a
                            // word boundary; its bytes are then not used: read any staged word.
                            const int32_t w = (at >> 2) - range.first;
#if !defined(__CUDA_ARCH__)
                            if (w < 0 || w > range.words) host_stage_fault = true;  // the emulation checks
#endif
                            return words[range.align + (w < range.words ? w : range.words - 1)];
                          },
                          word[n], shift[n], in[n]);
    } else {
      const uint32_t* base = aligned_words(term);
      load_term_words<kC>(P, term, y, x, live, [&](int32_t at) { return load_readonly(base + (at >> 2)); },
                          word[n], shift[n], in[n]);
    }
  }
  add_terms_words<kC, N>(terms, word, shift, in, acc);
}

template <typename Out>
INSTAHIDE_HD void store4(Out* dst, const Out (&v)[4]) {
#if defined(__CUDA_ARCH__)
  // 4 * sizeof(Out)-aligned (checked by the host): one 16- or 8-byte store.
  // (Streaming, evict-first stores measured 17% slower on an H100: plain stores.)
  if constexpr (sizeof(Out) == 4) {
    float4 w;
    memcpy(&w, v, 16);
    *reinterpret_cast<float4*>(dst) = w;
  } else {
    uint2 w;
    memcpy(&w, v, 8);
    *reinterpret_cast<uint2*>(dst) = w;
  }
#else
  for (int i = 0; i < 4; ++i) dst[i] = v[i];
#endif
}

// Signs, converts and writes the lane's 4 pixels p..p+3, with vector stores.
template <typename Out, bool kChannelsLast, int kC, SignMode kSign>
INSTAHIDE_HD void store_pixels_words(const Params& P, const Shared& sh, int64_t row, uint32_t p,
                                     const float (&acc)[kWordPixels][kMaxChannels]) {
  Out value[kWordPixels][kC];
  INSTAHIDE_UNROLL
  for (int c = 0; c < kC; ++c) {
    // Mask bits j..j+3, j = c*HW + p: p and HW are multiples of 4, so one word holds them.
    uint32_t nibble = 0;
    if (kSign == SignMode::kFlip) {
      const uint32_t j = uint32_t(c) * P.HW + p;
      nibble = sh.keystream[c * kWordsPerChannel + (j >> 5) - sh.first_block[c] * 16] >> (j & 31);
    }
    INSTAHIDE_UNROLL
    for (int i = 0; i < kWordPixels; ++i) {
      uint32_t bits = bits_of(acc[i][c]);
      if (kSign == SignMode::kFlip) bits ^= ((nibble >> i) & 1u) << 31;
      else if (kSign == SignMode::kAbs) bits &= 0x7fffffffu;
      value[i][c] = convert<Out>(float_of(bits));
    }
  }
  Out* out = static_cast<Out*>(P.out) + row * int64_t(kC) * P.HW;
  if (kChannelsLast) {
    // The lane's 4 * kC values are contiguous: kC stores of 4.
    const Out* flat = &value[0][0];
    INSTAHIDE_UNROLL
    for (int m = 0; m < kC; ++m) {
      Out four[4] = {flat[4 * m], flat[4 * m + 1], flat[4 * m + 2], flat[4 * m + 3]};
      store4(out + p * uint32_t(kC) + 4 * m, four);
    }
  } else {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kC; ++c) {
      Out four[4] = {value[0][c], value[1][c], value[2][c], value[3][c]};
      store4(out + c * int64_t(P.HW) + p, four);
    }
  }
}

// One pass of the word-wide path, lane `lane`: mixes, signs and writes the pixels
// q + 4 * lane .. q + 4 * lane + 3, kTermsPerGroup terms at a time (then 2, then 1).
template <typename Out, bool kChannelsLast, int kC, bool kFromStage>
INSTAHIDE_HD void word_pass(const Params& P, const Shared& sh, const StageBuffer& buf, int lane, int64_t row,
                            uint32_t q, uint32_t p1, const float (&beta)[kMaxChannels]) {
  const uint32_t p = q + uint32_t(kWordPixels * lane);
  const bool live = p < p1;  // p1 - p0 is a multiple of 4: all 4 pixels or none
  const uint32_t y = P.div_w.div(p), x = p - y * P.W;
  float acc[kWordPixels][kMaxChannels];
  INSTAHIDE_UNROLL
  for (int i = 0; i < kWordPixels; ++i)
    INSTAHIDE_UNROLL
    for (int c = 0; c < kMaxChannels; ++c) acc[i][c] = -beta[c];
  int t = 0;
  for (; t + kTermsPerGroup <= P.k; t += kTermsPerGroup)
    gather_terms_words<kC, kTermsPerGroup, kFromStage>(P, sh, t, buf, y, x, live, acc);
  if (kTermsPerGroup > 2 && t + 2 <= P.k) {
    gather_terms_words<kC, 2, kFromStage>(P, sh, t, buf, y, x, live, acc);
    t += 2;
  }
  if (kTermsPerGroup > 1 && t < P.k) gather_terms_words<kC, 1, kFromStage>(P, sh, t, buf, y, x, live, acc);
  if (!live) return;
  switch (P.sign) {
    case SignMode::kFlip: store_pixels_words<Out, kChannelsLast, kC, SignMode::kFlip>(P, sh, row, p, acc); break;
    case SignMode::kAbs: store_pixels_words<Out, kChannelsLast, kC, SignMode::kAbs>(P, sh, row, p, acc); break;
    default: store_pixels_words<Out, kChannelsLast, kC, SignMode::kNone>(P, sh, row, p, acc); break;
  }
}

// The end of the block of passes that starts at q0 (the chunk's pixels end at p1).
INSTAHIDE_HD uint32_t block_end(const Params& P, uint32_t q0, uint32_t p1) {
  const uint32_t block = uint32_t(P.stage_passes) * kWordPassPixels;
  return q0 + block < p1 ? q0 + block : p1;
}

// Pipelined loads: issues the copies of the chunk's first block (see compute_chunk_words).
template <int kC>
INSTAHIDE_HD bool issue_first_block(const Params& P, const Shared& sh, Staging& stage, int lane, uint32_t p0,
                                    uint32_t p1) {
  return issue_stage<kC>(P, sh, stage_buffer(stage, 0, stage_share(P.k, true)), lane, p0, block_end(P, p0, p1) - 1);
}

// L2 prefetch: asks for the chunk's first P.stage_passes passes (see prefetch_l2).
template <int kC>
INSTAHIDE_HD void prefetch_first_passes(const Params& P, const Shared& sh, int lane, uint32_t p0, uint32_t p1) {
  const uint32_t end = p0 + uint32_t(P.stage_passes) * kWordPassPixels;
  prefetch_block<kC>(P, sh, lane, p0, (end < p1 ? end : p1) - 1);
}

// Phase 2 of a chunk on the word-wide path: the passes q = p0, p0 + 128, ... Staged, in
// blocks of P.stage_passes passes, each staged where it can be (`stage` is the warp's):
// copied, then computed; pipelined, with the next block's copies in flight (into the other
// half of the staging) while a block is computed, the first block's issued by the chunk's
// setup (first_staged: issue_first_block's answer).
template <typename Out, bool kChannelsLast, int kC, Loads kLoads>
INSTAHIDE_HD void compute_chunk_words(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t p0,
                                      uint32_t p1, Staging* stage, bool first_staged) {
  float beta[kMaxChannels] = {};
  for (int t = 0; t < P.k; ++t) {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kMaxChannels; ++c) beta[c] += sh.term[t].lam_shift[c];
  }
  const StageBuffer direct = {nullptr, nullptr, 0};
  auto passes = [&](uint32_t q0, uint32_t q1, bool staged, const StageBuffer& buf) {
    if (staged) {
      for (uint32_t q = q0; q < q1; q += kWordPassPixels)
        word_pass<Out, kChannelsLast, kC, true>(P, sh, buf, lane, row, q, p1, beta);
    } else {
      for (uint32_t q = q0; q < q1; q += kWordPassPixels)
        word_pass<Out, kChannelsLast, kC, false>(P, sh, direct, lane, row, q, p1, beta);
    }
  };
  if constexpr (kLoads == Loads::kDirect) {
    passes(p0, p1, false, direct);
  } else if constexpr (kLoads == Loads::kPrefetch) {
    // The chunk's setup asked for its first P.stage_passes passes (prefetch_first_passes).
    const uint32_t ahead = uint32_t(P.stage_passes) * kWordPassPixels;
    for (uint32_t q = p0; q < p1; q += kWordPassPixels) {
      const uint32_t next = q + ahead;
      if (next < p1)
        prefetch_block<kC>(P, sh, lane, next, (next + kWordPassPixels < p1 ? next + kWordPassPixels : p1) - 1);
      word_pass<Out, kChannelsLast, kC, false>(P, sh, direct, lane, row, q, p1, beta);
    }
  } else {
    constexpr bool kPipelined = kLoads == Loads::kPipelined;
    auto end_of = [&](uint32_t q0) { return block_end(P, q0, p1); };
    const int share = stage_share(P.k, kPipelined);
    if constexpr (!kPipelined) {
      // Block by block: its copies issued, waited for, and its passes computed.
      for (uint32_t q0 = p0; q0 < p1; q0 = end_of(q0)) {
        const StageBuffer buf = stage_buffer(*stage, 0, share);
        const bool staged = issue_stage<kC>(P, sh, buf, lane, q0, end_of(q0) - 1);
        if (staged) {
          wait_async_copies<0>();
          warp_sync();  // every lane's copies are done
        }
        passes(q0, end_of(q0), staged, buf);
      }
    } else {
      // The same, but each block's copies are issued before the previous block is computed,
      // into the other buffer. A group of copies is committed per issue, so the wait for all
      // but the newest group leaves only the next block's copies in flight.
      int b = 0;
      bool staged = first_staged;
      for (uint32_t q0 = p0; q0 < p1; q0 = end_of(q0), b ^= 1) {
        const uint32_t next = end_of(q0);
        const bool next_staged =
            next < p1 && issue_stage<kC>(P, sh, stage_buffer(*stage, b ^ 1, share), lane, next, end_of(next) - 1);
        if (staged) {
          if (next < p1)
            wait_async_copies<1>();
          else
            wait_async_copies<0>();
          warp_sync();  // every lane's copies are done
        }
        passes(q0, next, staged, stage_buffer(*stage, b, share));
        staged = next_staged;
      }
    }
  }
}

INSTAHIDE_HD void chunk_of(const Params& P, int64_t item, int64_t& row, uint32_t& p0, uint32_t& p1) {
  row = item / P.chunks_per_row;
  p0 = uint32_t(item - row * P.chunks_per_row) * uint32_t(kChunkPixels);
  p1 = p0 + uint32_t(kChunkPixels) < P.HW ? p0 + uint32_t(kChunkPixels) : P.HW;
}

// What one warp does, lane `lane`: the chunks first, first + stride, ... (`sh` and `stage`
// are the warp's own; the host emulation runs this with the lanes as fibers).
template <typename Out, bool kChannelsLast, typename U, int kC, bool kWords, Loads kLoads>
INSTAHIDE_HD void encode_chunks(const Params& P, Shared& sh, Staging* stage, int lane, int64_t first, int64_t stride) {
  for (int64_t item = first; item < P.items; item += stride) {
    int64_t row;
    uint32_t p0, p1;
    chunk_of(P, item, row, p0, p1);
    warp_sync();  // the warp's previous chunk is done with `sh`
    bool first_staged = false;
    if constexpr (kWords && kLoads == Loads::kPipelined)
      setup_chunk<true>(P, sh, lane, row, p0, p1,
                        [&] { first_staged = issue_first_block<kC>(P, sh, *stage, lane, p0, p1); });
    else if constexpr (kWords && kLoads == Loads::kPrefetch)
      setup_chunk<true>(P, sh, lane, row, p0, p1, [&] { prefetch_first_passes<kC>(P, sh, lane, p0, p1); });
    else
      setup_chunk<false>(P, sh, lane, row, p0, p1, [] {});
    warp_sync();
    const int32_t label = load_label(P, sh, lane, p0);
    if constexpr (kWords)
      compute_chunk_words<Out, kChannelsLast, kC, kLoads>(P, sh, lane, row, p0, p1, stage, first_staged);
    else
      compute_chunk<Out, kChannelsLast, U, kC>(P, sh, lane, row, p0, p1);
    if (mixes_labels(P, p0)) {  // the same for the whole warp
      keep_label(P, sh, lane, p0, label);
      warp_sync();
      write_labels(P, sh, lane, row, p0);
    }
  }
}

template <typename Out, bool kChannelsLast, typename U, int kC, bool kWords, Loads kLoads>
__global__ void __launch_bounds__(kThreads, INSTAHIDE_CUDA_MIN_BLOCKS) encode_kernel(const Params P) {
  __shared__ Shared per_warp[kWarps];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  Staging* stage = nullptr;
  if constexpr (kLoads == Loads::kStaged || kLoads == Loads::kPipelined) {
    __shared__ Staging staging[kWarps];
    stage = &staging[warp];
  }
  encode_chunks<Out, kChannelsLast, U, kC, kWords, kLoads>(P, per_warp[warp], stage, lane,
                                                           int64_t(blockIdx.x) * kWarps + warp,
                                                           int64_t(gridDim.x) * kWarps);
}

void check_arg(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}


// The word-wide path's loads, from INSTAHIDE_CUDA_LOADS (read at each call, so that one build
// can compare them): `direct` (the default, or unset); `staged` or `staged:N`, blocks of 1 or
// N passes (N = 1, 2, 4; see plan_stage); `pipelined` or `pipelined:N`, the same with the
// next block's copies in flight while a block is computed (see compute_chunk_words);
// `prefetch` or `prefetch:N`, direct loads with L2 prefetches 1 or N passes ahead (see
// prefetch_block).
struct LoadPath {
  Loads loads;
  int passes;
};

LoadPath load_path_chosen() {
  const char* choice = std::getenv("INSTAHIDE_CUDA_LOADS");
  if (choice == nullptr || *choice == '\0' || std::strcmp(choice, "direct") == 0) return {Loads::kDirect, 0};
  const std::pair<const char*, Loads> paths[] = {
      {"staged", Loads::kStaged}, {"pipelined", Loads::kPipelined}, {"prefetch", Loads::kPrefetch}};
  for (const auto& [name, loads] : paths) {
    if (std::strcmp(choice, name) == 0) return {loads, 1};
    for (int passes = 1; passes <= kMaxStagePasses; passes *= 2) {
      if (std::string(name) + ":" + std::to_string(passes) == choice) return {loads, passes};
    }
  }
  check_arg(false, std::string("INSTAHIDE_CUDA_LOADS=") + choice +
                       ": expected 'direct', or 'staged', 'pipelined' or 'prefetch', each alone or with ':N' "
                       "(N = 1, 2, 4)");
  return {Loads::kDirect, 0};
}

// Host-side checks (no device memory is read) and the kernel's parameters.
Params prepare(const EncodeArgs& a, const LabelArgs* labels, bool& wide) {
  check_arg(a.k >= 1 && a.k <= kMaxTerms, "k = " + std::to_string(a.k) + " must be in [1, " +
                                              std::to_string(kMaxTerms) + "]");
  check_arg(a.private_terms >= 1 && a.private_terms <= a.k,
            "private_terms = " + std::to_string(a.private_terms) + " must be in [1, k]");
  check_arg(a.rows >= 0, "rows = " + std::to_string(a.rows) + " must be >= 0");
  check_arg(a.out_height > 0 && a.out_width > 0, "the output window must have a positive size");
  check_arg(a.sign == SignMode::kFlip || a.sign == SignMode::kAbs || a.sign == SignMode::kNone, "unknown sign mode");
  check_arg(a.out_type == OutType::kFloat32 || a.out_type == OutType::kFloat16 || a.out_type == OutType::kBFloat16,
            "unknown output type");
  const int64_t C = a.sources[0].channels;
  check_arg(C >= 1 && C <= kMaxChannels, "private images: channels = " + std::to_string(C) + " must be in [1, 4]");
  check_arg(a.out_height <= INT32_MAX && a.out_width <= INT32_MAX &&
                a.out_height * a.out_width <= INT32_MAX / C,
            "the output window is too large for the CUDA kernel (C*H*W must be < 2^31)");

  Params P = {};
  wide = false;
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    const std::string name = i == 0 ? "private images" : "public images";
    check_arg(s.count > 0, name + ": the set is empty");
    check_arg(s.data != nullptr, name + ": no data");
    check_arg(s.channels == C, "public and private images must have the same channel count");
    check_arg(s.height > 0 && s.width > 0, name + ": images must have a positive size");
    check_arg(s.height <= INT32_MAX && s.width <= INT32_MAX, name + ": images are too large for the CUDA kernel");
    check_arg(s.pixel == PixelType::kUint8 || s.pixel == PixelType::kFloat32, name + ": unknown pixel type");
    Source& d = P.src[i];
    d.data = static_cast<const char*>(s.data);
    d.count = s.count;
    d.u8 = s.pixel == PixelType::kUint8;
    d.image_bytes = s.stride_n * (d.u8 ? 1 : 4);
    d.stride_c = s.stride_c;
    d.stride_h = s.stride_h;
    d.stride_w = s.stride_w;
    d.height = uint32_t(s.height);
    d.width = uint32_t(s.width);
    d.image_offset = s.image_offset;
    d.image_size = s.image_size;
    for (int c = 0; c < kMaxChannels; ++c) d.scale[c] = s.scale[c], d.shift[c] = s.shift[c];
    // Offsets within an image are computed in 32 bits where all of them fit.
    if (s.image_offset || s.image_size) {
      // Packed images (sizes in device memory, checked by the caller): channels-last, and no
      // image extends past the buffer, so the buffer's length bounds every offset.
      check_arg(s.image_offset && s.image_size, name + ": packed images need offsets and sizes");
      check_arg(s.stride_c == 1 && s.stride_w == C, name + ": packed images are channels-last");
      wide |= s.packed_elements > INT32_MAX;
    } else {
      int64_t span = add_span(0, s.stride_c, C - 1);
      span = add_span(span, s.stride_h, s.height - 1);
      span = add_span(span, s.stride_w, s.width - 1);
      wide |= span > INT32_MAX;
    }
  }
  P.row_id = a.row_id;
  P.tables_by_row_id = a.tables_by_row_id;
  P.index = a.index;
  P.lam = a.lam;
  P.offset = a.offset;
  P.flip = a.flip;
  P.out = a.out;
  P.key = mask_input(a.mask_key, a.epoch, 0);
  P.sign = a.sign;
  P.k = a.k;
  P.private_terms = a.private_terms;
  P.C = int(C);
  P.H = uint32_t(a.out_height);
  P.W = uint32_t(a.out_width);
  P.HW = P.H * P.W;
  P.div_w = make_fast_div(P.W);
  P.chunks_per_row = (int64_t(P.HW) + kChunkPixels - 1) / kChunkPixels;
  // The word-wide path: uint8 images whose pixels are channels-last or whose channel rows are
  // contiguous, rows of whole groups of 4 output pixels, and an output aligned for stores of 4.
  const int64_t out_bytes = a.out_type == OutType::kFloat32 ? 4 : 2;
  P.words = INSTAHIDE_CUDA_WORD_LOADS && !wide && P.W % kWordPixels == 0 &&
            reinterpret_cast<uintptr_t>(a.out) % uintptr_t(kWordPixels * out_bytes) == 0;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    P.words &= s.pixel == PixelType::kUint8 && (s.stride_w == 1 || (s.stride_c == 1 && s.stride_w == C));
  }
  const LoadPath path = load_path_chosen();  // read (and checked) at every call, taken where it applies
  P.loads = P.words ? path.loads : Loads::kDirect;
  P.stage_passes = P.words ? path.passes : 0;
  check_arg(a.rows <= INT64_MAX / P.chunks_per_row, "rows = " + std::to_string(a.rows) + " is too large");
  P.items = a.rows * P.chunks_per_row;
  if (labels) {
    check_arg(labels->classes >= 1 && labels->classes <= INT32_MAX,
              "classes = " + std::to_string(labels->classes) + " must be in [1, 2^31)");
    check_arg(labels->label_count >= 0, "the label count must be >= 0");
    check_arg(a.rows <= INT64_MAX / labels->classes, "rows x classes overflows");
    check_arg(a.rows == 0 || (labels->labels && labels->out), "encode_cuda: null labels or soft-label output");
    P.labels = labels->labels;
    P.label_count = labels->label_count;
    P.classes = labels->classes;
    P.renormalize = labels->renormalize;
    P.soft = labels->out;
  }
  return P;
}

template <typename Out, bool kChannelsLast, typename U, int kC>
void launch(const Params& P, cudaStream_t stream) {
  const unsigned grid = unsigned(std::min<int64_t>((P.items + kWarps - 1) / kWarps, INT32_MAX));  // loops beyond
  if constexpr (sizeof(U) == 4 && kC > 0) {
    if (P.words) {
      switch (P.loads) {
        case Loads::kStaged:
          encode_kernel<Out, kChannelsLast, U, kC, true, Loads::kStaged><<<grid, kThreads, 0, stream>>>(P);
          break;
        case Loads::kPipelined:
          encode_kernel<Out, kChannelsLast, U, kC, true, Loads::kPipelined><<<grid, kThreads, 0, stream>>>(P);
          break;
        case Loads::kPrefetch:
          encode_kernel<Out, kChannelsLast, U, kC, true, Loads::kPrefetch><<<grid, kThreads, 0, stream>>>(P);
          break;
        default:
          encode_kernel<Out, kChannelsLast, U, kC, true, Loads::kDirect><<<grid, kThreads, 0, stream>>>(P);
      }
      check_cuda(cudaGetLastError(), "encode_cuda: kernel launch");
      return;
    }
  }
  encode_kernel<Out, kChannelsLast, U, kC, false, Loads::kDirect><<<grid, kThreads, 0, stream>>>(P);
  check_cuda(cudaGetLastError(), "encode_cuda: kernel launch");
}

// One kernel per channel count for images whose offsets fit in 32 bits; one generic kernel
// (run-time channel count, 64-bit offsets) for the rest.
template <typename Out, bool kChannelsLast>
void launch_layout(const Params& P, bool wide, cudaStream_t stream) {
  if (wide) return launch<Out, kChannelsLast, uint64_t, 0>(P, stream);
  switch (P.C) {
    case 1: return launch<Out, kChannelsLast, uint32_t, 1>(P, stream);
    case 2: return launch<Out, kChannelsLast, uint32_t, 2>(P, stream);
    case 3: return launch<Out, kChannelsLast, uint32_t, 3>(P, stream);
    default: return launch<Out, kChannelsLast, uint32_t, 4>(P, stream);
  }
}

template <typename Out>
void launch_out(const Params& P, bool channels_last, bool wide, cudaStream_t stream) {
  if (channels_last)
    launch_layout<Out, true>(P, wide, stream);
  else
    launch_layout<Out, false>(P, wide, stream);
}

}  // namespace

void encode_cuda(const EncodeArgs& args, void* stream, const LabelArgs* labels) {
  bool wide = false;
  const Params P = prepare(args, labels, wide);
  if (args.rows == 0) return;
  check_arg(args.index && args.lam && args.offset && args.flip && args.out, "encode_cuda: a null key or output pointer");
  check_arg(args.sign != SignMode::kFlip || args.row_id, "encode_cuda: no row ids for the mask");
  check_arg(!args.tables_by_row_id || args.row_id, "encode_cuda: no row ids to look the tables up by");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args.out_type) {
    case OutType::kFloat32: launch_out<float>(P, args.out_channels_last, wide, s); break;
    case OutType::kFloat16: launch_out<__half>(P, args.out_channels_last, wide, s); break;
    case OutType::kBFloat16: launch_out<__nv_bfloat16>(P, args.out_channels_last, wide, s); break;
  }
}

CudaDeviceGuard::CudaDeviceGuard(int device) {
  check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  changed_ = previous_ != device;
}

CudaDeviceGuard::~CudaDeviceGuard() {
  if (changed_) (void)cudaSetDevice(previous_);
}

int cuda_pointer_device(const void* pointer) {
  cudaPointerAttributes attributes;
  check_cuda(cudaPointerGetAttributes(&attributes, pointer), "cudaPointerGetAttributes");
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged ? attributes.device : -1;
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so that it is not reported by a later call
    return 0;
  }
  return n;
}

std::string cuda_status() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("CUDA unavailable: ") + cudaGetErrorString(err);
  }
  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1, (void)cudaGetLastError();
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = -1, (void)cudaGetLastError();
  auto version = [](int v) { return v < 0 ? std::string("?") : std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  std::string text = "driver " + version(driver) + ", runtime " + version(runtime) + ": ";
  if (n == 0) return text + "no CUDA device";
  text += std::to_string(n) + " device(s)";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop;
    const cudaError_t e = cudaGetDeviceProperties(&prop, i);
    text += i == 0 ? ": " : "; ";
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      text += std::to_string(i) + " (" + cudaGetErrorString(e) + ")";
    } else {
      text += std::to_string(i) + " " + prop.name + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
    }
  }
  return text;
}

}  // namespace instahide
