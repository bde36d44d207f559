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
// word-wide path (see compute_chunk_words). A warp's whole work is encode_chunks, which the
// host emulation in tests runs as is.
#include "encode_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

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
constexpr int kPixelsPerThread = 2;  // per lane and pass
constexpr int kTermsPerGroup = 2;
constexpr int kMinBlocksPerSM = 4;  // blocks per SM the register allocation must allow
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

// __syncwarp on the device. On the host, nothing, unless the includer defines
// INSTAHIDE_HOST_WARP_SYNC: the emulation in csrc/tests runs a warp's lanes as fibers that
// switch to each other there, so that code between two syncs runs lane by lane.
#ifndef INSTAHIDE_HOST_WARP_SYNC
#define INSTAHIDE_HOST_WARP_SYNC()
#endif
INSTAHIDE_HD void warp_sync() {
#if defined(__CUDA_ARCH__)
  __syncwarp();
#else
  INSTAHIDE_HOST_WARP_SYNC();
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
  bool words;  // host only: the launch takes the word-wide path (see compute_chunk_words)
  // Soft labels, mixed by the warp of each row's first chunk from class ids or soft label
  // rows (both null: none).
  const int64_t* class_ids;
  const float* soft_in;
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
// flight while the keystream is computed.
INSTAHIDE_HD void setup_chunk(const Params& P, Shared& sh, int lane, int64_t row, uint32_t p0, uint32_t p1) {
  const int t = lane;
  const bool has_term = t < P.k;
  const uint64_t id = uint64_t(P.row_id ? P.row_id[row] : 0);
  const int64_t at = (P.tables_by_row_id ? int64_t(id) : row) * P.k + t;
  const int64_t idx = has_term ? P.index[at] : -1;
  const float lam = has_term ? P.lam[at] : 0.0f;
  const int32_t dy = has_term ? P.offset[2 * at] : 0, dx = has_term ? P.offset[2 * at + 1] : 0;
  const bool flip = has_term && P.flip[at] != 0;
  setup_keystream(P, sh, lane, id, p0, p1);
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
}

// ---- Soft labels, by the warp of each row's first chunk, in three steps around the chunk's
// passes: each lane of a private term loads its class id before the passes (so that the
// load's latency hides behind them), puts it into shared memory after them, and then the
// lanes write the row's classes lane, lane + 32, ... (soft label rows are read in that last
// step, a class per lane). The sums are mix_labels_cpu's (double, private terms in order, one
// rounding), so both agree bit for bit; a class id out of range, or the label of an image
// index out of range, adds to no class.
INSTAHIDE_HD bool mixes_labels(const Params& P, uint32_t p0) {
  return (P.class_ids != nullptr || P.soft_in != nullptr) && p0 == 0;
}

// (The class id is kept as int32, one register across the passes: classes < 2^31.)
INSTAHIDE_HD int32_t load_label(const Params& P, const Shared& sh, int lane, uint32_t p0) {
  if (!mixes_labels(P, p0) || P.class_ids == nullptr || lane >= P.private_terms) return -1;
  const int64_t image = sh.term[lane].label_index;
  const int64_t label = image >= 0 ? load_readonly(P.class_ids + image) : -1;
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
      if (P.soft_in) {
        const int64_t image = sh.term[t].label_index;
        if (image >= 0) sum += double(lam) * double(load_readonly(P.soft_in + image * P.classes + c));
      } else if (sh.term[t].label == c) {
        sum += double(lam);
      }
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
// is inside the image. `base` is aligned_words(term).
template <int kC>
INSTAHIDE_HD void load_term_words(const Params& P, const Term& term, const uint32_t* base, uint32_t y, uint32_t x,
                                  bool live, uint32_t (&word)[2 * kC], uint32_t (&shift)[kC], bool (&in)[kWordPixels]) {
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
      dst[m] = row_in ? load_readonly(base + (at >> 2)) : 0u;
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
// then the arithmetic.
template <int kC, int N>
INSTAHIDE_HD void gather_terms_words(const Params& P, const Shared& sh, int t0, uint32_t y, uint32_t x, bool live,
                                     float (&acc)[kWordPixels][kMaxChannels]) {
  const Term* terms = sh.term + t0;
  uint32_t word[N][2 * kC], shift[N][kC];
  bool in[N][kWordPixels];
  INSTAHIDE_UNROLL
  for (int n = 0; n < N; ++n) {
    const Term& term = terms[n];
    load_term_words<kC>(P, term, aligned_words(term), y, x, live, word[n], shift[n], in[n]);
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
template <typename Out, bool kChannelsLast, int kC>
INSTAHIDE_HD void word_pass(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t q, uint32_t p1,
                            const float (&beta)[kMaxChannels]) {
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
    gather_terms_words<kC, kTermsPerGroup>(P, sh, t, y, x, live, acc);
  if (kTermsPerGroup > 2 && t + 2 <= P.k) {
    gather_terms_words<kC, 2>(P, sh, t, y, x, live, acc);
    t += 2;
  }
  if (kTermsPerGroup > 1 && t < P.k) gather_terms_words<kC, 1>(P, sh, t, y, x, live, acc);
  if (!live) return;
  switch (P.sign) {
    case SignMode::kFlip: store_pixels_words<Out, kChannelsLast, kC, SignMode::kFlip>(P, sh, row, p, acc); break;
    case SignMode::kAbs: store_pixels_words<Out, kChannelsLast, kC, SignMode::kAbs>(P, sh, row, p, acc); break;
    default: store_pixels_words<Out, kChannelsLast, kC, SignMode::kNone>(P, sh, row, p, acc); break;
  }
}

// Phase 2 of a chunk on the word-wide path: the passes q = p0, p0 + 128, ...
template <typename Out, bool kChannelsLast, int kC>
INSTAHIDE_HD void compute_chunk_words(const Params& P, const Shared& sh, int lane, int64_t row, uint32_t p0,
                                      uint32_t p1) {
  float beta[kMaxChannels] = {};
  for (int t = 0; t < P.k; ++t) {
    INSTAHIDE_UNROLL
    for (int c = 0; c < kMaxChannels; ++c) beta[c] += sh.term[t].lam_shift[c];
  }
  for (uint32_t q = p0; q < p1; q += kWordPassPixels) word_pass<Out, kChannelsLast, kC>(P, sh, lane, row, q, p1, beta);
}

INSTAHIDE_HD void chunk_of(const Params& P, int64_t item, int64_t& row, uint32_t& p0, uint32_t& p1) {
  row = item / P.chunks_per_row;
  p0 = uint32_t(item - row * P.chunks_per_row) * uint32_t(kChunkPixels);
  p1 = p0 + uint32_t(kChunkPixels) < P.HW ? p0 + uint32_t(kChunkPixels) : P.HW;
}

// What one warp does, lane `lane`: the chunks first, first + stride, ... (`sh` is the warp's
// own; the host emulation runs this with the lanes as fibers).
template <typename Out, bool kChannelsLast, typename U, int kC, bool kWords>
INSTAHIDE_HD void encode_chunks(const Params& P, Shared& sh, int lane, int64_t first, int64_t stride) {
  for (int64_t item = first; item < P.items; item += stride) {
    int64_t row;
    uint32_t p0, p1;
    chunk_of(P, item, row, p0, p1);
    warp_sync();  // the warp's previous chunk is done with `sh`
    setup_chunk(P, sh, lane, row, p0, p1);
    warp_sync();
    const int32_t label = load_label(P, sh, lane, p0);
    if constexpr (kWords)
      compute_chunk_words<Out, kChannelsLast, kC>(P, sh, lane, row, p0, p1);
    else
      compute_chunk<Out, kChannelsLast, U, kC>(P, sh, lane, row, p0, p1);
    if (mixes_labels(P, p0)) {  // the same for the whole warp
      keep_label(P, sh, lane, p0, label);
      warp_sync();
      write_labels(P, sh, lane, row, p0);
    }
  }
}

template <typename Out, bool kChannelsLast, typename U, int kC, bool kWords>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) encode_kernel(const Params P) {
  __shared__ Shared per_warp[kWarps];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  encode_chunks<Out, kChannelsLast, U, kC, kWords>(P, per_warp[warp], lane, int64_t(blockIdx.x) * kWarps + warp,
                                                   int64_t(gridDim.x) * kWarps);
}

void check_arg(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}


// Host-side checks (no device memory is read: validate_shape, the CPU's checks of the call's
// scalars, and the kernel's 32-bit limits) and the kernel's parameters.
Params prepare(const EncodeArgs& a, const LabelArgs* labels, bool& wide) {
  validate_shape(a);
  const int64_t C = a.sources[0].channels;
  check_arg(a.out_height <= INT32_MAX && a.out_width <= INT32_MAX &&
                a.out_height * a.out_width <= INT32_MAX / C,
            "the output window is too large for the CUDA kernel (C*H*W must be < 2^31)");

  Params P = {};
  wide = false;
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    const std::string name = i == 0 ? "private images" : "public images";
    check_arg(s.height <= INT32_MAX && s.width <= INT32_MAX, name + ": images are too large for the CUDA kernel");
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
  P.words = !wide && P.W % kWordPixels == 0 &&
            reinterpret_cast<uintptr_t>(a.out) % uintptr_t(kWordPixels * out_bytes) == 0;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    P.words &= s.pixel == PixelType::kUint8 && (s.stride_w == 1 || (s.stride_c == 1 && s.stride_w == C));
  }
  check_arg(a.rows <= INT64_MAX / P.chunks_per_row, "rows = " + std::to_string(a.rows) + " is too large");
  P.items = a.rows * P.chunks_per_row;
  if (labels) {
    check_arg(labels->classes >= 1 && labels->classes <= INT32_MAX,
              "classes = " + std::to_string(labels->classes) + " must be in [1, 2^31)");
    check_arg(labels->label_count >= 0, "the label count must be >= 0");
    check_arg(a.rows <= INT64_MAX / labels->classes, "rows x classes overflows");
    check_arg(labels->label_count <= INT64_MAX / labels->classes, "labels x classes overflows");
    check_arg(!(labels->class_ids && labels->soft), "encode_cuda: class ids and soft labels: give one of the two");
    check_arg(a.rows == 0 || ((labels->class_ids || labels->soft) && labels->out),
              "encode_cuda: null labels or soft-label output");
    P.class_ids = labels->class_ids;
    P.soft_in = labels->soft;
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
      encode_kernel<Out, kChannelsLast, U, kC, true><<<grid, kThreads, 0, stream>>>(P);
      check_cuda(cudaGetLastError(), "encode_cuda: kernel launch");
      return;
    }
  }
  encode_kernel<Out, kChannelsLast, U, kC, false><<<grid, kThreads, 0, stream>>>(P);
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
