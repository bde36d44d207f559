// CPU kernel of the fused encoder: one pass per output row reads the k source windows at
// their own pixel type, normalizes, mixes, applies the sign mask and writes the output type.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "chacha20.h"
#include "cpu_rows.h"
#include "encode_cpu_avx512.h"
#include "encode.h"
#include "float_convert.h"
#include "platform.h"
#include "thread_pool.h"

// Hot loops get clones for AVX-512 and AVX2 hosts, picked at load time, so that one portable
// build runs at full vector width where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(INSTAHIDE_NO_CLONES)
#define INSTAHIDE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INSTAHIDE_VECTOR_CLONES
#endif

// Helpers of the cloned functions must inline into them to get their instruction set.
#define INSTAHIDE_INLINE INSTAHIDE_ALWAYS_INLINE

static_assert(INSTAHIDE_LITTLE_ENDIAN, "keystream bytes are read as little-endian words");

namespace instahide {
namespace {

using cpu::kKeystreamPad;
using cpu::Prefetcher;
using cpu::plan_prefetch;
using cpu::term_image;
using cpu::table_entry;

constexpr int kLanes = 16;         // ChaCha20 blocks computed side by side
constexpr int64_t kRowsPerTask = 16;

// One keystream block to compute: its nonce words, counter and destination.
struct BlockJob {
  uint32_t nonce[3];
  uint32_t counter;
  uint8_t* out;
};

// ChaCha20 on up to kLanes blocks at once; lanes are arrays so that the rounds vectorize.
INSTAHIDE_VECTOR_CLONES
void chacha20_lanes(const uint32_t key[8], const BlockJob* jobs, int n) {
  uint32_t s[16][kLanes], x[16][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const BlockJob& job = jobs[std::min(l, n - 1)];
    s[0][l] = 0x61707865u; s[1][l] = 0x3320646eu; s[2][l] = 0x79622d32u; s[3][l] = 0x6b206574u;
    for (int i = 0; i < 8; ++i) s[4 + i][l] = key[i];
    s[12][l] = job.counter;
    s[13][l] = job.nonce[0]; s[14][l] = job.nonce[1]; s[15][l] = job.nonce[2];
  }
  std::memcpy(x, s, sizeof(x));
  auto qr = [&x](int a, int b, int c, int d) {
    for (int l = 0; l < kLanes; ++l) {
      x[a][l] += x[b][l]; x[d][l] = rotl32(x[d][l] ^ x[a][l], 16);
      x[c][l] += x[d][l]; x[b][l] = rotl32(x[b][l] ^ x[c][l], 12);
      x[a][l] += x[b][l]; x[d][l] = rotl32(x[d][l] ^ x[a][l], 8);
      x[c][l] += x[d][l]; x[b][l] = rotl32(x[b][l] ^ x[c][l], 7);
    }
  };
  for (int round = 0; round < 10; ++round) {
    qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
    qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
  }
  for (int l = 0; l < n; ++l)
    for (int i = 0; i < 16; ++i) {
      uint32_t word = x[i][l] + s[i][l];
      std::memcpy(jobs[l].out + 4 * i, &word, 4);
    }
}

// Mask keystream of `rows` rows, row r at out + r * stride (stride >= its bytes + kKeystreamPad).
void mask_keystream(const uint8_t key_bytes[32], uint32_t epoch, const int64_t* row_id, int64_t rows,
                    int64_t bytes_per_row, int64_t stride, uint8_t* out) {
  const ChaChaInput in = mask_input(key_bytes, epoch, 0);
  const int64_t blocks = (bytes_per_row + 63) / 64;
  std::vector<uint8_t> tail(64);
  BlockJob jobs[kLanes];
  int n = 0;
  auto flush = [&] {
    if (n) chacha20_lanes(in.key, jobs, n);
    n = 0;
  };
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t row = uint64_t(row_id[r]);
    for (int64_t b = 0; b < blocks; ++b) {
      // The last block of a row may not fit the row's bytes: it goes through `tail`.
      bool partial = (b + 1) * 64 > stride;
      if (partial) flush();
      jobs[n++] = {{epoch, uint32_t(row), uint32_t(row >> 32)}, uint32_t(b), partial ? tail.data() : out + r * stride + b * 64};
      if (partial) {
        flush();
        std::memcpy(out + r * stride + b * 64, tail.data(), size_t(stride - b * 64));
      } else if (n == kLanes) {
        flush();
      }
    }
  }
  flush();
}

INSTAHIDE_INLINE float load_pixel(const uint8_t* p) { return float(*p); }
INSTAHIDE_INLINE float load_pixel(const float* p) { return *p; }

// The accumulator holds a tile of output rows, either interleaved like the private images
// ((y * W + x) * C + c) or planar (c * tile_rows * W + y * W + x), so that reads of
// channels-last or channels-first sources run contiguously, in runs as long as possible.
struct Tile {
  int64_t C, H, W;
  int64_t y0, rows;      // output rows [y0, y0 + rows)
  int64_t plane;         // planar: distance between channel planes (tile capacity * W)
  bool interleaved;
};

// Per-call constants: each source's scale and shift repeated with the channel period over
// one accumulate block (48 % C == 0 for C <= 4), so that per-row factors are whole-vector
// products instead of per-element fills.
struct Patterns {
  float scale[2][48];
  float shift[2][48];
};

Patterns make_patterns(const EncodeArgs& args) {
  Patterns p{};
  for (int i = 0; i < 2; ++i) {
    const ImageSource& s = args.sources[i];
    const int64_t C = std::max<int64_t>(1, std::min<int64_t>(s.channels, kMaxChannels));
    for (int j = 0; j < 48; ++j) p.scale[i][j] = s.scale[j % C], p.shift[i][j] = s.shift[j % C];
  }
  return p;
}

// Everything one term of one row needs: its window (cpu_rows.h) and what follows.
struct Term : cpu::TermWindow {
  const ImageSource* source;
  bool contiguous;            // the source's pixel rows have the accumulator's layout
  // lam * scale[i % C] for i < 48: the per-element factor of interleaved runs, whose first C
  // entries are the per-channel factors (48 % C == 0 for C <= 4, and 48 floats fill whole
  // vectors of 4, 8 or 16 lanes).
  float alpha_pattern[48];
};

// Per-thread buffers, reused across rows.
struct Scratch {
  std::vector<float> acc, acc_init, acc_flipped;
  std::vector<uint32_t> planes;
  std::vector<uint8_t> keystream;
};

constexpr int64_t kBlock = 48;  // elements per accumulate step: whole vectors of 4, 8 or 16 lanes

template <typename T>
INSTAHIDE_INLINE const T* pixel_ptr(const Term& t, int64_t ys, int64_t xs, int64_t c) {
  const ImageSource& s = *t.source;
  return reinterpret_cast<const T*>(t.image) + ys * t.stride_h + xs * s.stride_w + c * s.stride_c;
}

// a[i] += pattern[i % 48] * p[i] for i < n; a and p start at a pixel boundary.
template <typename T>
INSTAHIDE_INLINE void accumulate_interleaved(float* __restrict a, const T* __restrict p, int64_t n,
                                             const float* __restrict pattern, Prefetcher& pf) {
  float pat[kBlock];
  std::memcpy(pat, pattern, sizeof(pat));
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) a[i + j] += pat[j] * load_pixel(p + i + j);
    pf.step();
  }
  for (int j = 0; i + j < n; ++j) a[i + j] += pat[j] * load_pixel(p + i + j);
}

// a[i] += alpha * p[i] for i < n.
template <typename T>
INSTAHIDE_INLINE void accumulate_plane(float* __restrict a, const T* __restrict p, int64_t n, float alpha,
                                       Prefetcher& pf) {
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) a[i + j] += alpha * load_pixel(p + i + j);
    pf.step();
  }
  for (; i < n; ++i) a[i] += alpha * load_pixel(p + i);
}

// Adds term t's window to the tile: output position (y, p) reads source pixel (y + dy, p + dx)
// for p in [lo, hi); `acc` is the tile's accumulator (or its mirror image for flipped terms).
template <typename T>
INSTAHIDE_INLINE void accumulate_term(float* acc, const Term& t, const Tile& tile, int64_t lo, int64_t hi,
                                      Prefetcher& pf) {
  const ImageSource& src = *t.source;
  const int64_t C = tile.C, W = tile.W;
  const int64_t ya = std::max(tile.y0, -t.dy), yb = std::min(tile.y0 + tile.rows, t.height - t.dy);
  if (ya >= yb || lo >= hi) return;  // rows outside the source read padding (0)
  // Whole source rows that follow each other in memory merge into one run.
  const bool whole_rows = lo == 0 && hi == W && t.width == W;
  if (t.contiguous && tile.interleaved) {
    if (whole_rows && t.stride_h == W * C) {
      accumulate_interleaved(acc + (ya - tile.y0) * W * C, pixel_ptr<T>(t, ya + t.dy, t.dx, 0), (yb - ya) * W * C,
                             t.alpha_pattern, pf);
    } else {
      for (int64_t y = ya; y < yb; ++y)
        accumulate_interleaved(acc + ((y - tile.y0) * W + lo) * C, pixel_ptr<T>(t, y + t.dy, lo + t.dx, 0),
                               (hi - lo) * C, t.alpha_pattern, pf);
    }
  } else if (t.contiguous) {
    for (int64_t c = 0; c < C; ++c) {
      float* plane = acc + c * tile.plane - tile.y0 * W;  // indexed by y * W + x
      if (whole_rows && t.stride_h == W) {
        accumulate_plane(plane + ya * W, pixel_ptr<T>(t, ya + t.dy, t.dx, c), (yb - ya) * W, t.alpha_pattern[c],
                         pf);
      } else {
        for (int64_t y = ya; y < yb; ++y)
          accumulate_plane(plane + y * W + lo, pixel_ptr<T>(t, y + t.dy, lo + t.dx, c), hi - lo, t.alpha_pattern[c],
                           pf);
      }
    }
  } else {  // any other strides: element by element
    const int64_t sw = src.stride_w;
    for (int64_t y = ya; y < yb; ++y)
      for (int64_t c = 0; c < C; ++c) {
        const T* p = pixel_ptr<T>(t, y + t.dy, lo + t.dx, c);
        const int64_t ty = y - tile.y0;
        for (int64_t x = lo; x < hi; ++x)
          acc[tile.interleaved ? (ty * W + x) * C + c : c * tile.plane + ty * W + x] +=
              t.alpha_pattern[c] * load_pixel(p + (x - lo) * sw);
      }
  }
}

// Whether term t reads whole source rows, one after another in memory, for every row of the
// tile: its window is then one run per tile (per channel plane when planar).
INSTAHIDE_INLINE bool covers_tile(const Term& t, const Tile& tile) {
  return t.contiguous && t.dx == 0 && t.width == tile.W && tile.y0 + t.dy >= 0 &&
         tile.y0 + tile.rows + t.dy <= t.height && t.stride_h == (tile.interleaved ? tile.W * tile.C : tile.W);
}

// a[i] = (kInit ? init[i % 48] : a[i]) + sum_u factor[u][i % 48] * p[u][i] for i < n: N terms
// in one pass over the accumulator.
template <typename T, int N, bool kInit>
INSTAHIDE_INLINE void mix_run(float* __restrict a, const T* const* src, const float (*factor)[kBlock],
                              const float* init, int64_t n, Prefetcher& pf) {
  const T* p[N];
  float f[N][kBlock], z[kBlock];
  for (int u = 0; u < N; ++u) p[u] = src[u], std::memcpy(f[u], factor[u], sizeof(f[u]));
  if (kInit) std::memcpy(z, init, sizeof(z));
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    for (int j = 0; j < kBlock; ++j) {
      float v = kInit ? z[j] : a[i + j];
      for (int u = 0; u < N; ++u) v += f[u][j] * load_pixel(p[u] + i + j);
      a[i + j] = v;
    }
    pf.step(N);
  }
  for (int j = 0; i + j < n; ++j) {
    float v = kInit ? z[j] : a[i + j];
    for (int u = 0; u < N; ++u) v += f[u][j] * load_pixel(p[u] + i + j);
    a[i + j] = v;
  }
}

template <typename T, bool kInit>
INSTAHIDE_INLINE void mix_group(float* a, const T* const* p, const float (*factor)[kBlock], int count,
                                const float* init, int64_t n, Prefetcher& pf) {
  switch (count) {
    case 1: mix_run<T, 1, kInit>(a, p, factor, init, n, pf); break;
    case 2: mix_run<T, 2, kInit>(a, p, factor, init, n, pf); break;
    case 3: mix_run<T, 3, kInit>(a, p, factor, init, n, pf); break;
    default: mix_run<T, 4, kInit>(a, p, factor, init, n, pf); break;
  }
}

// Mixes up to 4 tile-covering terms (same pixel type) into `target` in one pass; `init_pattern`
// (48-periodic, channel c's value at c) starts the accumulator unless it is null.
template <typename T>
INSTAHIDE_INLINE void mix_covering(float* target, const Term* const* terms, int count, const Tile& tile,
                                   const float* init_pattern, Prefetcher& pf) {
  const T* p[4];
  float factor[4][kBlock];
  if (tile.interleaved) {
    for (int u = 0; u < count; ++u) {
      p[u] = pixel_ptr<T>(*terms[u], tile.y0 + terms[u]->dy, 0, 0);
      std::memcpy(factor[u], terms[u]->alpha_pattern, sizeof(factor[u]));
    }
    const int64_t n = tile.rows * tile.W * tile.C;
    if (init_pattern) mix_group<T, true>(target, p, factor, count, init_pattern, n, pf);
    else mix_group<T, false>(target, p, factor, count, nullptr, n, pf);
    return;
  }
  for (int64_t c = 0; c < tile.C; ++c) {
    float init[kBlock];
    for (int u = 0; u < count; ++u) {
      p[u] = pixel_ptr<T>(*terms[u], tile.y0 + terms[u]->dy, 0, c);
      std::fill_n(factor[u], kBlock, terms[u]->alpha_pattern[c]);
    }
    const int64_t n = tile.rows * tile.W;
    if (init_pattern) {
      std::fill_n(init, kBlock, init_pattern[c]);
      mix_group<T, true>(target + c * tile.plane, p, factor, count, init, n, pf);
    } else {
      mix_group<T, false>(target + c * tile.plane, p, factor, count, nullptr, n, pf);
    }
  }
}

// acc[y, x] += mirror[y, W-1-x] over the tile: flipped windows were gathered mirrored.
INSTAHIDE_INLINE void add_mirrored(float* __restrict acc, const float* __restrict mirror, const Tile& tile) {
  const int64_t C = tile.C, W = tile.W;
  if (tile.interleaved) {
    for (int64_t y = 0; y < tile.rows; ++y)
      for (int64_t x = 0; x < W; ++x)
        for (int64_t c = 0; c < C; ++c) acc[(y * W + x) * C + c] += mirror[(y * W + W - 1 - x) * C + c];
  } else {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < tile.rows; ++y) {
        float* a = acc + c * tile.plane + y * W;
        const float* m = mirror + c * tile.plane + y * W;
        for (int64_t x = 0; x < W; ++x) a[x] += m[W - 1 - x];
      }
  }
}

struct ToHalf { static INSTAHIDE_INLINE uint16_t go(uint32_t b) { return float_to_float16(b); } };
struct ToBFloat { static INSTAHIDE_INLINE uint16_t go(uint32_t b) { return float_to_bfloat16(b); } };
struct ToFloat { static INSTAHIDE_INLINE float go(uint32_t b) { return bits_float(b); } };

// dst[c * n + i] = src[i * C + c]: n interleaved pixels to planes (C == 3 spelled out to vectorize).
INSTAHIDE_INLINE void deinterleave(uint32_t* __restrict dst, const uint32_t* __restrict src, int64_t C, int64_t n) {
  if (C == 3) {
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = src[3 * i];
      dst[n + i] = src[3 * i + 1];
      dst[2 * n + i] = src[3 * i + 2];
    }
  } else {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) dst[c * n + i] = src[i * C + c];
  }
}

// Flips the sign of planes[i], i < n, where bit j0 + i of the row's keystream is set.
INSTAHIDE_INLINE void apply_sign(uint32_t* __restrict plane, const uint8_t* __restrict keystream, int64_t j0, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    const int64_t j = j0 + i0;
    uint64_t word;
    std::memcpy(&word, keystream + (j >> 3), 8);
    const uint32_t bits = uint32_t(word >> (j & 7));
    const int64_t m = std::min<int64_t>(32, n - i0);
    for (int64_t i = 0; i < m; ++i) plane[i0 + i] ^= ((bits >> i) & 1u) << 31;
  }
}

// memcpy with non-temporal stores where the CPU has them: the output goes to memory without
// first being read into the cache (a plain store reads the line it writes).
INSTAHIDE_INLINE void stream_copy(void* dst, const void* src, int64_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#if defined(__SSE2__)
  // Called per 32 elements by the encoder: the memcpy calls (not inlined, variable sizes) only
  // where needed.
  const int64_t head = std::min<int64_t>(bytes, (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
  if (head) std::memcpy(d, s, size_t(head));
  int64_t i = head;
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  if (i < bytes) std::memcpy(d + i, s + i, size_t(bytes - i));
#else
  std::memcpy(d, s, size_t(bytes));
#endif
}

// One output plane run straight from the accumulator: 32 elements at a time are gathered
// (every `stride`-th word: 1 planar, C interleaved), signed by mask bits j0 + i, converted and
// streamed out, so the tile is read once and the output written once.
template <typename Conv, typename Out, int kStride>
INSTAHIDE_INLINE void store_plane(Out* dst, const uint32_t* __restrict src, int64_t stride,
                                  const uint8_t* __restrict keystream, int64_t j0, int64_t n, uint32_t keep, bool flip) {
  const int64_t s = kStride > 0 ? kStride : stride;
  alignas(64) Out chunk[32];
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    uint32_t bits = 0;
    if (flip) {
      const int64_t j = j0 + i0;
      uint64_t word;
      std::memcpy(&word, keystream + (j >> 3), 8);
      bits = uint32_t(word >> (j & 7));
    }
    const uint32_t* p = src + i0 * s;
    const int64_t m = std::min<int64_t>(32, n - i0);
    if (m == 32) {
      for (int i = 0; i < 32; ++i) chunk[i] = Conv::go((p[i * s] & keep) ^ (((bits >> i) & 1u) << 31));
    } else {
      for (int64_t i = 0; i < m; ++i) chunk[i] = Conv::go((p[i * s] & keep) ^ (((bits >> i) & 1u) << 31));
    }
    stream_copy(dst + i0, chunk, m * int64_t(sizeof(Out)));
  }
}

// Signs and writes the tile to channels-last output: planes hold channel c's rows at
// c * plane_stride (float bits).
template <typename Conv, typename Out>
INSTAHIDE_INLINE void store_tile_channels_last(const EncodeArgs& args, Out* out_image, uint32_t* planes,
                                               int64_t plane_stride, const uint8_t* keystream, const Tile& tile) {
  const int64_t C = tile.C, H = tile.H, W = tile.W, n = tile.rows * W;
  for (int64_t c = 0; c < C; ++c) {
    uint32_t* p = planes + c * plane_stride;
    if (args.sign == SignMode::kFlip) {
      apply_sign(p, keystream, (c * H + tile.y0) * W, n);  // mask bit j = c*H*W + y*W + x
    } else if (args.sign == SignMode::kAbs) {
      for (int64_t i = 0; i < n; ++i) p[i] &= 0x7fffffffu;
    }
  }
  Out* __restrict o = out_image + tile.y0 * W * C;
  if (C == 3) {
    const uint32_t *p0 = planes, *p1 = planes + plane_stride, *p2 = planes + 2 * plane_stride;
    for (int64_t i = 0; i < n; ++i) {
      o[3 * i] = Conv::go(p0[i]);
      o[3 * i + 1] = Conv::go(p1[i]);
      o[3 * i + 2] = Conv::go(p2[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) o[i * C + c] = Conv::go(planes[c * plane_stride + i]);
  }
}

constexpr int64_t kTileElements = 4096;  // accumulator floats per tile (L1-sized)

inline int64_t tile_rows(int64_t C, int64_t H, int64_t W) {
  return std::max<int64_t>(1, std::min<int64_t>(H, kTileElements / (C * W)));
}

template <typename Conv, typename Out>
INSTAHIDE_INLINE void encode_row(const EncodeArgs& args, const Patterns& patterns, int64_t r, int64_t end,
                                 const uint8_t* keystream,
                                 Scratch& s) {
  const ImageSource& priv = args.sources[0];
  const int64_t C = priv.channels, H = args.out_height, W = args.out_width;
  const int64_t k = args.k;
  const bool interleaved = priv.stride_c == 1 && priv.stride_w == C;

  Term terms[kMaxTerms];
  // sum_t lam_t * shift[c], c = i % C: the normalization's constant part
  float beta_pattern[kBlock] = {};
  bool any_flip = false;
  const int64_t entry = table_entry(args, r);
  for (int64_t t = 0; t < k; ++t) {
    Term& term = terms[t];
    const int which = t < args.private_terms ? 0 : 1;
    const ImageSource& src = args.sources[which];
    const int64_t at = entry + t;
    static_cast<cpu::TermWindow&>(term) = cpu::term_window(args, r, t);
    term.source = &src;
    term.contiguous = interleaved ? (src.stride_c == 1 && src.stride_w == C) : src.stride_w == 1;
    any_flip |= term.flip;
    const float lam = args.lam[at];
    const float* scale = patterns.scale[which];
    const float* shift = patterns.shift[which];
    for (int j = 0; j < kBlock; ++j) {
      term.alpha_pattern[j] = lam * scale[j];
      beta_pattern[j] += lam * shift[j];
    }
  }
  Prefetcher pf;
  plan_prefetch(args, r + 1, end, pf);

  const int64_t capacity = tile_rows(C, H, W);
  // Every accumulator element starts from -beta[c] (padding reads 0, which normalizes to
  // -shift): one interleaved pixel row of that, copied per tile row, made when first needed.
  float* init_row = s.acc_init.data();
  bool init_row_ready = false;
  float init_pattern[kBlock];
  const float zero_pattern[kBlock] = {};
  for (int j = 0; j < kBlock; ++j) init_pattern[j] = -beta_pattern[j];

  Out* out_image = static_cast<Out*>(args.out) + r * C * H * W;
  float* acc = s.acc.data();
  float* mirror = s.acc_flipped.data();
  for (int64_t y0 = 0; y0 < H; y0 += capacity) {
    const Tile tile{C, H, W, y0, std::min(capacity, H - y0), capacity * W, interleaved};
    // Terms whose windows cover the tile with whole source rows mix up to 4 at a time, the
    // first pass writing the accumulator's initial value too.
    bool acc_ready = false, mirror_ready = false;
    bool covering[kMaxTerms] = {};
    for (int flipped = 0; flipped < 2; ++flipped)
      for (PixelType pixel : {PixelType::kUint8, PixelType::kFloat32}) {
        const Term* group[kMaxTerms];
        int count = 0;
        for (int64_t t = 0; t < k; ++t)
          if (terms[t].flip == bool(flipped) && terms[t].source->pixel == pixel && covers_tile(terms[t], tile))
            group[count++] = &terms[t], covering[t] = true;
        for (int g = 0; g < count; g += 4) {
          bool& ready = flipped ? mirror_ready : acc_ready;
          const float* pattern = ready ? nullptr : flipped ? zero_pattern : init_pattern;
          float* target = flipped ? mirror : acc;
          if (pixel == PixelType::kUint8)
            mix_covering<uint8_t>(target, group + g, std::min(4, count - g), tile, pattern, pf);
          else
            mix_covering<float>(target, group + g, std::min(4, count - g), tile, pattern, pf);
          ready = true;
        }
      }
    if (!acc_ready) {
      if (interleaved && !init_row_ready) {
        for (int64_t j = 0; j < W * C; j += kBlock)
          std::copy_n(init_pattern, std::min<int64_t>(kBlock, W * C - j), init_row + j);
        init_row_ready = true;
      }
      for (int64_t y = 0; y < tile.rows; ++y) {
        if (interleaved) {
          std::memcpy(acc + y * W * C, init_row, sizeof(float) * size_t(W * C));
        } else {
          for (int64_t c = 0; c < C; ++c) std::fill_n(acc + c * tile.plane + y * W, W, init_pattern[c]);
        }
      }
    }
    if (any_flip && !mirror_ready) std::fill(mirror, mirror + C * capacity * W, 0.0f);
    for (int64_t t = 0; t < k; ++t) {
      if (covering[t]) continue;
      const Term& term = terms[t];
      // Window position p reads source column p + dx; a flipped window puts position p at
      // output column W-1-p, so it gathers into `mirror`, added back mirrored below.
      const int64_t lo = std::max<int64_t>(0, -term.dx);
      const int64_t hi = std::min<int64_t>(W, term.width - term.dx);
      float* target = term.flip ? mirror : acc;
      if (term.source->pixel == PixelType::kUint8)
        accumulate_term<uint8_t>(target, term, tile, lo, hi, pf);
      else
        accumulate_term<float>(target, term, tile, lo, hi, pf);
    }
    if (any_flip) add_mirrored(acc, mirror, tile);
    const uint32_t* acc_bits = reinterpret_cast<const uint32_t*>(acc);
    if (!args.out_channels_last) {
      const uint32_t keep = args.sign == SignMode::kAbs ? 0x7fffffffu : 0xffffffffu;
      const bool flip = args.sign == SignMode::kFlip;
      for (int64_t c = 0; c < C; ++c) {
        Out* dst = out_image + (c * H + y0) * W;
        const int64_t j0 = (c * H + y0) * W, n = tile.rows * W;  // mask bit j = c*H*W + y*W + x
        if (!interleaved)
          store_plane<Conv, Out, 1>(dst, acc_bits + c * tile.plane, 1, keystream, j0, n, keep, flip);
        else if (C == 3)
          store_plane<Conv, Out, 3>(dst, acc_bits + c, 3, keystream, j0, n, keep, flip);
        else
          store_plane<Conv, Out, 0>(dst, acc_bits + c, C, keystream, j0, n, keep, flip);
      }
      continue;
    }
    uint32_t* planes = reinterpret_cast<uint32_t*>(acc);
    int64_t plane_stride = tile.plane;
    if (interleaved) {
      deinterleave(s.planes.data(), planes, C, tile.rows * W);
      planes = s.planes.data();
      plane_stride = tile.rows * W;
    }
    store_tile_channels_last<Conv>(args, out_image, planes, plane_stride, keystream, tile);
  }
  pf.finish();
}

// Rows [r0, r1) with the keystream of row r at keystream + (r - r0) * stride. One cloned
// function per output type so that the inlined row kernel is compiled for each vector width.
template <typename Conv, typename Out>
INSTAHIDE_INLINE void encode_rows(const EncodeArgs& args, const Patterns& p, int64_t r0, int64_t r1,
                                  const uint8_t* keystream, int64_t stride, Scratch& s) {
  for (int64_t r = r0; r < r1; ++r) encode_row<Conv, Out>(args, p, r, r1, keystream + (r - r0) * stride, s);
}

INSTAHIDE_VECTOR_CLONES
void encode_rows_float32(const EncodeArgs& a, const Patterns& p, int64_t r0, int64_t r1, const uint8_t* ks,
                         int64_t stride, Scratch& s) {
  encode_rows<ToFloat, float>(a, p, r0, r1, ks, stride, s);
}
INSTAHIDE_VECTOR_CLONES
void encode_rows_float16(const EncodeArgs& a, const Patterns& p, int64_t r0, int64_t r1, const uint8_t* ks,
                         int64_t stride, Scratch& s) {
  encode_rows<ToHalf, uint16_t>(a, p, r0, r1, ks, stride, s);
}
INSTAHIDE_VECTOR_CLONES
void encode_rows_bfloat16(const EncodeArgs& a, const Patterns& p, int64_t r0, int64_t r1, const uint8_t* ks,
                          int64_t stride, Scratch& s) {
  encode_rows<ToBFloat, uint16_t>(a, p, r0, r1, ks, stride, s);
}

#if INSTAHIDE_BENCH
// Rows [r0, r1) of gather_sum_cpu: the encoder's reads (k whole images per row, prefetched a
// row ahead the same way, mixed up to 4 at a time in one pass) and writes (streamed float32),
// without its normalization, sign or change of layout.
// `args` describes the bound's rows as the encoder's (one channel, images of `bytes` pixels in
// one pixel row), so that it prefetches by the encoder's own plan.
INSTAHIDE_VECTOR_CLONES
void gather_sum_rows(const EncodeArgs& args, int64_t r0, int64_t r1, float* out, float* acc) {
  const int k = args.k;
  const int64_t bytes = args.out_width;
  float ones[4][kBlock];
  std::fill_n(&ones[0][0], 4 * kBlock, 1.0f);
  const float zero[kBlock] = {};
  for (int64_t r = r0; r < r1; ++r) {
    Prefetcher pf;
    plan_prefetch(args, r + 1, r1, pf);
    const uint8_t* p[kMaxTerms];
    for (int t = 0; t < k; ++t) p[t] = reinterpret_cast<const uint8_t*>(term_image(args, r, t));
    for (int g = 0; g < k; g += 4) {
      if (g == 0) mix_group<uint8_t, true>(acc, p, ones, std::min(4, k), zero, bytes, pf);
      else mix_group<uint8_t, false>(acc, p + g, ones, std::min(4, k - g), nullptr, bytes, pf);
    }
    stream_copy(out + r * bytes, acc, bytes * int64_t(sizeof(float)));
    pf.finish();
  }
}
#endif

// Row r's id checked against the tables it looks up; returns where its k entries start.
int64_t checked_entry(const EncodeArgs& a, int64_t r) {
  const int64_t row = a.row_id[r];
  if (row < 0) throw std::invalid_argument("row ids must be >= 0, got " + std::to_string(row));
  if (a.tables_by_row_id && row >= a.table_rows)
    throw std::invalid_argument("row id " + std::to_string(row) + " is out of range for keys of " +
                                std::to_string(a.table_rows) + " rows");
  return table_entry(a, r);
}

std::string describe(const char* what, int64_t value) { return std::string(what) + " = " + std::to_string(value); }

void check(bool ok, const char* message) {
  if (!ok) throw std::invalid_argument(message);
}

// Messages with values are built only on failure: validate runs on every call.
template <typename Message>
void check(bool ok, Message&& message) {
  if (!ok) throw std::invalid_argument(message());
}

}  // namespace

void validate_call(const EncodeArgs& a);
void validate_rows(const EncodeArgs& a, int64_t r0, int64_t r1);

namespace {

// Soft labels of rows [r0, r1) into out (rows, classes), as mix_labels_cpu describes; with
// `renormalize`, each row divided by its private coefficient sum (float, in term order).
void mix_label_rows(const EncodeArgs& a, const LabelArgs& l, int64_t r0, int64_t r1) {
  std::vector<double> sums(static_cast<size_t>(l.classes));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = a.row_id[r], entry = checked_entry(a, r);
    std::fill(sums.begin(), sums.end(), 0.0);
    float total = 0.0f;
    for (int t = 0; t < a.private_terms; ++t) {
      const int64_t image = a.index[entry + t];
      if (image < 0 || image >= l.label_count)
        throw std::invalid_argument("keys.index[" + std::to_string(row) + ", " + std::to_string(t) + "] = " +
                                    std::to_string(image) + " is out of range for " + std::to_string(l.label_count) +
                                    " labels");
      const float lam = a.lam[entry + t];
      total += lam;
      if (l.soft) {
        const float* y = l.soft + image * l.classes;
        for (int64_t c = 0; c < l.classes; ++c) sums[size_t(c)] += double(lam) * double(y[c]);
        continue;
      }
      const int64_t label = l.class_ids[image];
      if (label < 0 || label >= l.classes)
        throw std::invalid_argument("labels[" + std::to_string(image) + "] = " + std::to_string(label) +
                                    " is out of range: class ids must be >= 0 and below num_classes = " +
                                    std::to_string(l.classes));
      sums[size_t(label)] += double(lam);
    }
    float* out = l.out + r * l.classes;
    for (int64_t c = 0; c < l.classes; ++c) out[c] = float(sums[size_t(c)]);
    if (l.renormalize)
      for (int64_t c = 0; c < l.classes; ++c) out[c] /= total;
  }
}

void check_label_args(const EncodeArgs& a, const LabelArgs& l) {
  check(a.k >= 1 && a.k <= kMaxTerms && a.private_terms >= 1 && a.private_terms <= a.k, "bad term counts");
  check(a.rows >= 0 && l.label_count >= 0, "rows and labels must be >= 0");
  check(l.classes >= 1, [&] { return describe("classes", l.classes) + " must be >= 1"; });
  check(a.rows <= INT64_MAX / l.classes, "rows x classes overflows");
  check(!(l.class_ids && l.soft), "class ids and soft labels: give one of the two");
  check(l.label_count <= INT64_MAX / l.classes, "labels x classes overflows");
  check(a.rows == 0 || (a.index && a.lam && a.row_id && (l.class_ids || l.soft) && l.out),
        "null table, labels or output");
}

constexpr int64_t kLabelRowsPerTask = 256;

void encode_all(const EncodeArgs& args, int num_threads, const LabelArgs* labels, CpuKernel kernel) {
  const ImageSource& priv = args.sources[0];
  const int64_t C = priv.channels, H = args.out_height, W = args.out_width;
  const int64_t bytes = mask_bytes_per_row(C, H, W);
  const int64_t stride = bytes + kKeystreamPad;
  const int64_t tasks = (args.rows + kRowsPerTask - 1) / kRowsPerTask;
  const Patterns patterns = make_patterns(args);
  const bool avx512 = kernel == CpuKernel::kAuto && cpu::avx512_kernel_applies(args);
  // Label tasks come after the encode tasks: whichever thread runs out of rows first takes
  // them. A batch of one encode task mixes its labels after it, without waking a thread.
  const int64_t label_tasks = labels && tasks > 1 ? (args.rows + kLabelRowsPerTask - 1) / kLabelRowsPerTask : 0;
  parallel_for(tasks + label_tasks, num_threads, [&](int64_t task) {
    if (task >= tasks) {
      const int64_t r0 = (task - tasks) * kLabelRowsPerTask;
      mix_label_rows(args, *labels, r0, std::min(args.rows, r0 + kLabelRowsPerTask));
      return;
    }
    thread_local Scratch s;
    const size_t tile_size = size_t(C * W * tile_rows(C, H, W));
    s.acc.resize(tile_size);
    s.acc_init.resize(size_t(C * W));
    s.acc_flipped.resize(tile_size);
    s.planes.resize(tile_size);
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(args.rows, r0 + kRowsPerTask);
    // Checked here, in parallel and just before their table entries are read again; the rows
    // of other tasks are neither read nor prefetched by this one.
    validate_rows(args, r0, r1);
    if (args.sign == SignMode::kFlip) {
      s.keystream.resize(size_t((r1 - r0) * stride));
      mask_keystream(args.mask_key, args.epoch, args.row_id + r0, r1 - r0, bytes, stride, s.keystream.data());
    }
    if (avx512) {
      cpu::encode_rows_avx512(args, r0, r1, s.keystream.data(), stride);
      return;
    }
    switch (args.out_type) {
      case OutType::kFloat32: encode_rows_float32(args, patterns, r0, r1, s.keystream.data(), stride, s); break;
      case OutType::kFloat16: encode_rows_float16(args, patterns, r0, r1, s.keystream.data(), stride, s); break;
      case OutType::kBFloat16: encode_rows_bfloat16(args, patterns, r0, r1, s.keystream.data(), stride, s); break;
    }
  });
  if (labels && !label_tasks) mix_label_rows(args, *labels, 0, args.rows);
}

}  // namespace

// The core trusts nothing its caller passes: every index the kernel follows and every
// coefficient is checked (O(rows * k), small next to the encoding), and every size product in
// 64 bits. validate_shape checks the call's scalars and sources (encode_cuda too), validate_call
// adds the packed images' sizes, validate_rows each row's table entries; encode_cpu runs the
// latter in each task, on the rows it is about to encode.
void validate_shape(const EncodeArgs& a) {
  check(a.k >= 1 && a.k <= kMaxTerms,
        [&] { return describe("k", a.k) + " must be in [1, " + std::to_string(kMaxTerms) + "]"; });
  check(a.private_terms >= 1 && a.private_terms <= a.k,
        [&] { return describe("private_terms", a.private_terms) + " must be in [1, k]"; });
  check(a.rows >= 0, [&] { return describe("rows", a.rows) + " must be >= 0"; });
  check(a.out_height > 0 && a.out_width > 0, "the output window must have a positive size");
  check(!a.tables_by_row_id || a.table_rows >= 0, "table_rows must be >= 0");
  check(a.sign == SignMode::kFlip || a.sign == SignMode::kAbs || a.sign == SignMode::kNone, "unknown sign mode");
  check(a.out_type == OutType::kFloat32 || a.out_type == OutType::kFloat16 || a.out_type == OutType::kBFloat16,
        "unknown output type");
  check(a.rows == 0 || (a.out && a.index && a.lam && a.offset && a.flip && a.row_id), "null table or output");
  const int64_t C = a.sources[0].channels;
  check(C >= 1 && C <= kMaxChannels,
        [&] { return "private images: " + describe("channels", C) + " must be in [1, 4]"; });
  // Output elements and the mask's 32-bit block counter (512 elements per block) in range.
  const int64_t row_elements = add_span(0, C, add_span(0, a.out_height, a.out_width));
  check(row_elements < (int64_t(1) << 41) && add_span(0, a.rows, row_elements) < INT64_MAX / 4, [&] {
    return "out: the output is too large (" + std::to_string(a.rows) + " rows of " + std::to_string(C) + "x" +
           std::to_string(a.out_height) + "x" + std::to_string(a.out_width) + ")";
  });
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    const char* name = i == 0 ? "private images" : "public images";
    check(s.data != nullptr || s.count == 0, [&] { return std::string(name) + ": no data"; });
    check(s.count > 0, [&] { return std::string(name) + ": the set is empty"; });
    check(s.pixel == PixelType::kUint8 || s.pixel == PixelType::kFloat32,
          [&] { return std::string(name) + ": unknown pixel type"; });
    check(s.channels >= 1 && s.channels <= kMaxChannels,
          [&] { return std::string(name) + ": " + describe("channels", s.channels) + " must be in [1, 4]"; });
    check(s.height > 0 && s.width > 0, [&] { return std::string(name) + ": images must have a positive size"; });
    check(s.channels == a.sources[0].channels, "public and private images must have the same channel count");
    if (s.image_offset || s.image_size) {
      check(s.image_offset && s.image_size,
            [&] { return std::string(name) + ": packed images need offsets and sizes"; });
      check(s.stride_c == 1 && s.stride_w == s.channels,
            [&] { return std::string(name) + ": packed images are channels-last"; });
      check(s.packed_elements >= 0, [&] { return std::string(name) + ": negative buffer length"; });
    } else {
      // Element addresses i * stride_n + c * stride_c + y * stride_h + x * stride_w stay in 64 bits.
      int64_t span = add_span(0, s.stride_n, s.count - 1);
      span = add_span(span, s.stride_c, s.channels - 1);
      span = add_span(span, s.stride_h, s.height - 1);
      span = add_span(span, s.stride_w, s.width - 1);
      check(span < INT64_MAX / 4,
            [&] { return std::string(name) + ": strides address more than 2^61 bytes"; });
    }
  }
}

// validate_shape, and the packed images' sizes (host memory): every image inside the buffer.
void validate_call(const EncodeArgs& a) {
  validate_shape(a);
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    const char* name = i == 0 ? "private images" : "public images";
    if (!s.image_offset) continue;
    for (int64_t j = 0; j < s.count; ++j) {
      const int64_t h = s.image_size[2 * j], w = s.image_size[2 * j + 1], first = s.image_offset[j];
      // h, w < 2^31 (int32) and C <= 4: h * w * C fits 64 bits; `first` is checked before the sum.
      if (h <= 0 || w <= 0 || first < 0 || first > s.packed_elements || h * w * s.channels > s.packed_elements - first)
        throw std::invalid_argument(std::string(name) + ": image " + std::to_string(j) +
                                    " lies outside the packed buffer or has no pixels");
    }
  }
}

void validate_rows(const EncodeArgs& a, int64_t r0, int64_t r1) {
  // Messages are built only on failure: this loop runs for every row of every call.
  auto cell = [](int64_t row, int t) { return "[" + std::to_string(row) + ", " + std::to_string(t) + "]"; };
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = a.row_id[r], entry = checked_entry(a, r);
    for (int t = 0; t < a.k; ++t) {
      const int64_t at = entry + t, idx = a.index[at];
      const ImageSource& s = a.sources[t < a.private_terms ? 0 : 1];
      if (idx < 0 || idx >= s.count)
        throw std::invalid_argument("keys.index" + cell(row, t) + " = " + std::to_string(idx) +
                                    " is out of range for a set of " + std::to_string(s.count) + " images");
      const float lam = a.lam[at];
      if (!(lam - lam == 0.0f))  // NaN or infinite (no <cmath> isfinite: -ffast-math proof)
        throw std::invalid_argument("keys.lam" + cell(row, t) + " = " + std::to_string(lam) + " is not finite");
      // Any window offset is memory-safe (reads outside an image give 0, as in the CUDA
      // kernel); public patches outside their image break a rule of the keys, checked on request.
      if (a.patches_inside && t >= a.private_terms) {
        const int64_t h = s.image_size ? s.image_size[2 * idx] : s.height;
        const int64_t w = s.image_size ? s.image_size[2 * idx + 1] : s.width;
        const int64_t dy = a.offset[2 * at], dx = a.offset[2 * at + 1];  // int32: no overflow below
        if (dy < 0 || dx < 0 || dy + a.out_height > h || dx + a.out_width > w)
          throw std::invalid_argument("keys.offset" + cell(row, t) + " = (" + std::to_string(dy) + ", " +
                                      std::to_string(dx) + ") puts the " + std::to_string(a.out_height) + "x" +
                                      std::to_string(a.out_width) + " patch outside public image " +
                                      std::to_string(idx) + " (" + std::to_string(h) + ", " + std::to_string(w) + ")");
      }
    }
  }
}

void validate(const EncodeArgs& a) {
  validate_call(a);
  validate_rows(a, 0, a.rows);
}

void encode_cpu(const EncodeArgs& args, int num_threads, const LabelArgs* labels, CpuKernel kernel) {
  validate_call(args);  // and each task validates its rows before it reads them
  if (labels) check_label_args(args, *labels);
  if (kernel != CpuKernel::kAuto && kernel != CpuKernel::kPortable) throw std::invalid_argument("unknown CPU kernel");
  if (args.rows == 0) return;
  encode_all(args, num_threads, labels, kernel);
}

void mix_labels_cpu(const EncodeArgs& a, const LabelArgs& l) {
  check_label_args(a, l);
  mix_label_rows(a, l, 0, a.rows);
}

void mask_cpu(const uint8_t key[32], uint32_t epoch, const int64_t* row_id, int64_t rows, int64_t elements_per_row,
              int8_t* out, int num_threads) {
  check(rows >= 0 && elements_per_row >= 0, "mask: rows and elements must be >= 0");
  check(elements_per_row < (int64_t(1) << 41), "mask: rows of 2^41 elements or more overflow the block counter");
  check(rows == 0 || elements_per_row == 0 || (row_id && out), "mask: null row ids or output");
  const int64_t bytes = (elements_per_row + 7) / 8;
  const int64_t stride = bytes + kKeystreamPad;
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, num_threads, [&](int64_t task) {
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
    std::vector<uint8_t> keystream(size_t((r1 - r0) * stride));
    mask_keystream(key, epoch, row_id + r0, r1 - r0, bytes, stride, keystream.data());
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* ks = keystream.data() + (r - r0) * stride;
      int8_t* o = out + r * elements_per_row;
      for (int64_t j = 0; j < elements_per_row; ++j) o[j] = int8_t(1 - 2 * ((ks[j >> 3] >> (j & 7)) & 1));
    }
  });
}

#if INSTAHIDE_BENCH
void gather_sum_cpu(const uint8_t* images, int64_t count, int64_t bytes, const int64_t* index, int k, int64_t rows,
                    float* out, int num_threads) {
  check(k >= 1 && k <= kMaxTerms && rows >= 0 && count >= 0 && bytes >= 1, "gather_sum: bad sizes");
  check(rows == 0 || (images && index && out), "gather_sum: null buffer");
  for (int64_t i = 0; i < rows * k; ++i)
    if (index[i] < 0 || index[i] >= count) throw std::invalid_argument("gather_sum: index out of range");
  EncodeArgs args;
  ImageSource& s = args.sources[0];
  s.data = images, s.count = count, s.channels = 1, s.height = 1, s.width = bytes;
  s.stride_n = bytes, s.stride_c = 1, s.stride_h = bytes, s.stride_w = 1;
  args.k = args.private_terms = k, args.rows = rows, args.index = index;
  args.out_height = 1, args.out_width = bytes;
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, num_threads, [&](int64_t task) {
    thread_local std::vector<float> acc;
    acc.resize(size_t(bytes));
    const int64_t r0 = task * kRowsPerTask;
    gather_sum_rows(args, r0, std::min(rows, r0 + kRowsPerTask), out, acc.data());
  });
}
#endif

void chacha20_keystream(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, int64_t blocks,
                        uint8_t* out) {
  const ChaChaInput in = chacha_input(key, nonce);
  check(blocks >= 0, "blocks must be >= 0");
  check(uint64_t(counter) + uint64_t(blocks) <= (uint64_t(1) << 32), "ChaCha20 block counter would wrap");
  BlockJob jobs[kLanes];
  for (int64_t b0 = 0; b0 < blocks; b0 += kLanes) {
    const int n = int(std::min<int64_t>(kLanes, blocks - b0));
    for (int l = 0; l < n; ++l)
      jobs[l] = {{in.nonce[0], in.nonce[1], in.nonce[2]}, uint32_t(counter + b0 + l), out + (b0 + l) * 64};
    chacha20_lanes(in.key, jobs, n);
  }
}

}  // namespace instahide
