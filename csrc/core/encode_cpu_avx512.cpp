// AVX-512 row kernel of the CPU encoder (see encode_cpu_avx512.h). For each output pixel row
// and each run of 16 pixels: every term's 16 source pixels are loaded at their own type
// (masked at the window's edges, so padding reads nothing), converted and multiplied into the
// accumulators with one FMA per vector; the sum is then turned into channel planes (or
// channels-last order), signed with 16 mask bits per vector, converted and streamed out
// (non-temporal stores). The accumulators never leave the registers. Rows whose windows are
// all unflipped and inside their images (the common case) take a path without masks.
//
// Sums per element, as in the portable kernel: -sum_t lam_t*shift[c], then the unflipped terms
// in order (one FMA each), plus the flipped terms summed apart from 0 in order.
#include "encode_cpu_avx512.h"

#include <cstring>
#include <type_traits>

#include "cpu_rows.h"

// Linux x86-64 only (GCC or Clang): where the function-level target attributes and the
// run-time CPU check are known to work; elsewhere the portable kernel runs.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define INSTAHIDE_AVX512_KERNEL 1
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own _mm512_undefined_* in the headers
#endif
#include <immintrin.h>
#else
#define INSTAHIDE_AVX512_KERNEL 0
#endif

namespace instahide {
namespace cpu {

#if INSTAHIDE_AVX512_KERNEL

#define INSTAHIDE_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi2,fma")))
#define INSTAHIDE_AVX512 INSTAHIDE_AVX512_TARGET __attribute__((always_inline)) inline

namespace {

constexpr uint64_t kEveryThird = 0x249249249249ull;  // bits 0, 3, ..., 45: one per pixel of 16

// Picks 16 of 48 floats (three vectors) with two two-source permutes: out[m] = in[index[m]].
struct Pick48 {
  alignas(64) int32_t first[16];   // index[m] where it is < 32 (from the first two vectors)
  alignas(64) int32_t second[16];  // m to keep that, or 16 + index[m] - 32 (from the third)

  template <typename Index>
  explicit Pick48(Index index) {
    for (int m = 0; m < 16; ++m) {
      const int i = index(m);
      first[m] = i < 32 ? i : 0;
      second[m] = i < 32 ? m : 16 + i - 32;
    }
  }
};

// Element e of a 16-pixel run of 3 interleaved channels is pixel e / 3, channel e % 3.
struct Permutations {
  Pick48 plane[3] = {Pick48([](int m) { return 3 * m; }), Pick48([](int m) { return 3 * m + 1; }),
                     Pick48([](int m) { return 3 * m + 2; })};
  // channel planes from a run loaded in reverse pixel order (flipped windows)
  Pick48 plane_reversed[3] = {Pick48([](int m) { return 3 * (15 - m); }),
                              Pick48([](int m) { return 3 * (15 - m) + 1; }),
                              Pick48([](int m) { return 3 * (15 - m) + 2; })};
  // channels-last vector q from three planes
  Pick48 interleave[3] = {Pick48([](int m) { return 16 * (m % 3) + m / 3; }),
                          Pick48([](int m) { return 16 * ((16 + m) % 3) + (16 + m) / 3; }),
                          Pick48([](int m) { return 16 * ((32 + m) % 3) + (32 + m) / 3; })};
};

const Permutations& permutations() {
  static const Permutations p;
  return p;
}

INSTAHIDE_AVX512 __m512 pick48(const __m512* v, const Pick48& p) {
  const __m512 low = _mm512_permutex2var_ps(v[0], _mm512_load_si512(p.first), v[1]);
  return _mm512_permutex2var_ps(low, _mm512_load_si512(p.second), v[2]);
}

// Lanes i of 16 with lo <= i < hi.
INSTAHIDE_AVX512 uint32_t lanes(int64_t lo, int64_t hi) {
  lo = lo < 0 ? 0 : lo;
  hi = hi > 16 ? 16 : hi;
  return hi <= lo ? 0u : ((1u << hi) - 1u) & ~((1u << lo) - 1u);
}

INSTAHIDE_AVX512 __m512 u8_to_float(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }

// 16 pixels of 3 interleaved channels at p (48 elements), lanes outside `valid` read as 0.
template <typename T>
INSTAHIDE_AVX512 void load_interleaved(const char* p, uint32_t valid, __m512* v) {
  if (valid == 0xffffu) {
    for (int q = 0; q < 3; ++q) {
      if (sizeof(T) == 1)
        v[q] = u8_to_float(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q)));
      else
        v[q] = _mm512_loadu_ps(p + 64 * q);
    }
    return;
  }
  const uint64_t elements = _pdep_u64(valid, kEveryThird) * 7;  // each pixel's bit to its 3 elements
  if (sizeof(T) == 1) {
    const __m512i bytes = _mm512_maskz_loadu_epi8(elements, p);  // masked lanes are never read
    v[0] = u8_to_float(_mm512_castsi512_si128(bytes));
    v[1] = u8_to_float(_mm512_extracti32x4_epi32(bytes, 1));
    v[2] = u8_to_float(_mm512_extracti32x4_epi32(bytes, 2));
  } else {
    for (int q = 0; q < 3; ++q) v[q] = _mm512_maskz_loadu_ps(__mmask16(elements >> (16 * q)), p + 64 * q);
  }
}

// 16 pixels of one channel plane at p.
template <typename T>
INSTAHIDE_AVX512 __m512 load_plane(const char* p, uint32_t valid) {
  if (sizeof(T) == 1)
    return u8_to_float(valid == 0xffffu ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                                        : _mm_maskz_loadu_epi8(__mmask16(valid), p));
  return valid == 0xffffu ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(__mmask16(valid), p);
}

// 16 mask bits from bit j of a row's keystream (padded: 8-byte loads stay in bounds).
INSTAHIDE_AVX512 uint32_t mask_bits(const uint8_t* keystream, int64_t j) {
  uint64_t word;
  std::memcpy(&word, keystream + (j >> 3), 8);
  return uint32_t(word >> (j & 7)) & 0xffffu;
}

INSTAHIDE_AVX512 __m512i apply_sign(__m512 v, SignMode sign, uint32_t bits) {
  const __m512i u = _mm512_castps_si512(v);
  if (sign == SignMode::kFlip) return _mm512_mask_xor_epi32(u, __mmask16(bits), u, _mm512_set1_epi32(int(0x80000000u)));
  if (sign == SignMode::kAbs) return _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  return u;
}

// float bits to bfloat16 / float16 in 16-bit lanes: float_convert.h's formulas, lane-wise.
INSTAHIDE_AVX512 __m256i to_bfloat16(__m512i u) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                         _mm512_and_si512(_mm512_srli_epi32(u, 16), one)), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

INSTAHIDE_AVX512 __m256i to_float16(__m512i u) {
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000));
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512i denorm_magic = _mm512_set1_epi32(int(((127u - 15u) + (23u - 10u) + 1u) << 23));
  const __m512i normal = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(int((15u - 127u) << 23))),
                       _mm512_add_epi32(_mm512_set1_epi32(0xfff), _mm512_and_si512(_mm512_srli_epi32(a, 13),
                                                                                   _mm512_set1_epi32(1)))),
      13);
  const __m512i subnormal = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(denorm_magic))), denorm_magic);
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(int(255u << 23)));
  const __m512i special = _mm512_mask_mov_epi32(_mm512_set1_epi32(0x7c00), is_nan, _mm512_set1_epi32(0x7e00));
  const __mmask16 tiny = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(int(113u << 23)));
  const __mmask16 overflow = _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(int((127u + 16u) << 23)));
  __m512i h = _mm512_mask_mov_epi32(normal, tiny, subnormal);
  h = _mm512_mask_mov_epi32(h, overflow, special);
  return _mm512_cvtepi32_epi16(_mm512_or_si512(h, sign));
}

// Stores 16 signed elements (lanes outside `valid` untouched). Whole vectors are streamed
// (non-temporal stores: the output goes to memory without first being read into the cache),
// in one store where the destination is aligned to the vector, else in 16-byte parts.
INSTAHIDE_AVX512 void stream_vector(char* dst, __m512i v) {
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
  } else if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm512_castsi512_si128(v));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), _mm512_extracti32x4_epi32(v, 1));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), _mm512_extracti32x4_epi32(v, 2));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), _mm512_extracti32x4_epi32(v, 3));
  } else {
    _mm512_storeu_si512(dst, v);
  }
}

INSTAHIDE_AVX512 void stream_vector(char* dst, __m256i v) {
  if ((reinterpret_cast<uintptr_t>(dst) & 31) == 0) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), v);
  } else if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(v));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), _mm256_extracti128_si256(v, 1));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
  }
}

template <OutType kOut>
INSTAHIDE_AVX512 void store16(void* dst, __m512i bits, uint32_t valid) {
  if (kOut == OutType::kFloat32) {
    if (valid == 0xffffu) stream_vector(static_cast<char*>(dst), bits);
    else _mm512_mask_storeu_epi32(dst, __mmask16(valid), bits);
    return;
  }
  const __m256i half = kOut == OutType::kBFloat16 ? to_bfloat16(bits) : to_float16(bits);
  if (valid == 0xffffu) stream_vector(static_cast<char*>(dst), half);
  else _mm256_mask_storeu_epi16(dst, __mmask16(valid), half);
}

// One term of one row: its window, and its strides in bytes.
struct RowTerm : TermWindow {
  int64_t row_bytes, plane_bytes, pixel_bytes;  // between pixel rows, channel planes, pixels
  bool u8;
};

// Term `term`'s 16 pixels at p (kVectors vectors of the accumulators' layout), lanes outside
// `valid` read as 0.
template <bool kInterleaved, int kC>
INSTAHIDE_AVX512 void load_term(const RowTerm& term, const char* p, uint32_t valid, __m512* v) {
  if (kInterleaved) {
    if (term.u8) load_interleaved<uint8_t>(p, valid, v);
    else load_interleaved<float>(p, valid, v);
  } else {
    for (int c = 0; c < kC; ++c)
      v[c] = term.u8 ? load_plane<uint8_t>(p + c * term.plane_bytes, valid)
                     : load_plane<float>(p + c * term.plane_bytes, valid);
  }
}

// Each source's scale and shift as vectors: interleaved runs repeat the channel pattern every
// 3 elements (vector v holds elements 16v..16v+15), planes use one value per vector.
template <bool kInterleaved, int kC>
struct Factors {
  static constexpr int kVectors = kInterleaved ? 3 : kC;
  __m512 scale[2][kVectors], shift[2][kVectors];

  INSTAHIDE_AVX512 explicit Factors(const EncodeArgs& a) {
    for (int i = 0; i < 2; ++i)
      for (int v = 0; v < kVectors; ++v) {
        float sc[16], sh[16];
        for (int m = 0; m < 16; ++m) {
          const int c = kInterleaved ? (16 * v + m) % 3 : v;
          sc[m] = a.sources[i].scale[c], sh[m] = a.sources[i].shift[c];
        }
        scale[i][v] = _mm512_loadu_ps(sc), shift[i][v] = _mm512_loadu_ps(sh);
      }
  }
};

// Signs, converts and stores the 16-pixel run (y, x0) of n valid pixels from its accumulators
// (flipped: the flipped terms' sum, in reverse pixel order).
template <OutType kOut, bool kInterleaved, int kC, typename Out>
INSTAHIDE_AVX512 void emit_run(const EncodeArgs& a, Out* out, const uint8_t* keystream, const Permutations& perm,
                               int64_t y, int64_t x0, int64_t n, const __m512* acc, const __m512* flipped,
                               bool any_flip) {
  const int64_t H = a.out_height, W = a.out_width;
  // Channel planes of the 16 pixels (mask bit j = c*H*W + y*W + x).
  __m512 planes[kC];
  for (int c = 0; c < kC; ++c) {
    if (kInterleaved) {
      planes[c] = pick48(acc, perm.plane[c]);
      if (any_flip) planes[c] = _mm512_add_ps(planes[c], pick48(flipped, perm.plane_reversed[c]));
    } else {
      planes[c] = acc[c];
      if (any_flip) {
        const __m512i reverse16 = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        planes[c] = _mm512_add_ps(planes[c], _mm512_permutexvar_ps(reverse16, flipped[c]));
      }
    }
  }
  uint32_t bits[kC] = {};
  if (a.sign == SignMode::kFlip)
    for (int c = 0; c < kC; ++c) bits[c] = mask_bits(keystream, (c * H + y) * W + x0);
  if (!(a.out_channels_last && kC == 3)) {  // one channel: channels-last is the same order
    for (int c = 0; c < kC; ++c)
      store16<kOut>(out + (c * H + y) * W + x0, apply_sign(planes[c], a.sign, bits[c]), uint32_t((1u << n) - 1u));
    return;
  }
  // Channels-last (kC == 3): element e of the run is pixel e / 3, channel e % 3.
  const uint64_t signs = _pdep_u64(bits[0], kEveryThird) | _pdep_u64(bits[1 % kC], kEveryThird << 1) |
                         _pdep_u64(bits[2 % kC], kEveryThird << 2);
  const uint64_t valid = (uint64_t(1) << (3 * n)) - 1;
  for (int q = 0; q < 3; ++q) {
    const uint32_t lanes_q = uint32_t(valid >> (16 * q)) & 0xffffu;
    if (!lanes_q) break;
    const __m512 v = pick48(planes, perm.interleave[q]);
    store16<kOut>(out + (y * W + x0) * 3 + 16 * q, apply_sign(v, a.sign, uint32_t(signs >> (16 * q)) & 0xffffu),
                  lanes_q);
  }
}

// One output row. kInterleaved: the sources hold 16-pixel runs of 3 interleaved channels
// (kC == 3), three vectors of 48 elements; else kC channel planes, one vector each. Both are
// compile-time constants so that the accumulators live in registers.
template <OutType kOut, bool kInterleaved, int kC>
INSTAHIDE_AVX512 void encode_row(const EncodeArgs& a, int64_t r, const uint8_t* keystream, const Permutations& perm,
                                 const Factors<kInterleaved, kC>& f, Prefetcher& pf) {
  using Out = typename std::conditional<kOut == OutType::kFloat32, float, uint16_t>::type;
  constexpr int kVectors = kInterleaved ? 3 : kC;  // accumulator vectors per 16 pixels
  const int64_t H = a.out_height, W = a.out_width, k = a.k;
  RowTerm terms[kMaxTerms];
  // Per-term factors lam * scale[c] and the accumulators' start -sum_t lam_t * shift[c] (the
  // normalization's constant part), as vectors of the run's channel pattern.
  __m512 alpha[kMaxTerms][kVectors], beta[kVectors], init[kVectors];
  for (int v = 0; v < kVectors; ++v) beta[v] = _mm512_setzero_ps();
  bool any_flip = false;
  const int64_t entry = table_entry(a, r);
  for (int64_t t = 0; t < k; ++t) {
    RowTerm& term = terms[t];
    const int which = t < a.private_terms ? 0 : 1;
    const ImageSource& s = a.sources[which];
    const int64_t bytes = pixel_bytes(s);
    static_cast<TermWindow&>(term) = term_window(a, r, t);
    term.row_bytes = term.stride_h * bytes;
    term.plane_bytes = s.stride_c * bytes;
    term.pixel_bytes = (kInterleaved ? 3 : 1) * bytes;
    term.u8 = s.pixel == PixelType::kUint8;
    any_flip |= term.flip;
    const __m512 lam = _mm512_set1_ps(a.lam[entry + t]);
    for (int v = 0; v < kVectors; ++v) {
      alpha[t][v] = _mm512_mul_ps(lam, f.scale[which][v]);
      beta[v] = _mm512_fmadd_ps(lam, f.shift[which][v], beta[v]);
    }
  }
  // -beta by its sign bit, as the portable kernel: 0 - 0 would give +0 where -0 is due.
  const __m512i sign_bit = _mm512_set1_epi32(int(0x80000000u));
  for (int v = 0; v < kVectors; ++v) init[v] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(beta[v]), sign_bit));
  Out* out = static_cast<Out*>(a.out) + r * kC * H * W;

  // The common row: every window unflipped and inside its image, whole runs of 16 pixels. Its
  // loads need no masks and no per-term bounds.
  bool inside = !any_flip && W % 16 == 0;
  for (int64_t t = 0; t < k && inside; ++t) {
    const RowTerm& term = terms[t];
    inside = term.dy >= 0 && term.dy + H <= term.height && term.dx >= 0 && term.dx + W <= term.width;
  }
  if (inside) {
    const char* first[kMaxTerms];  // each window's first pixel
    for (int64_t t = 0; t < k; ++t)
      first[t] = terms[t].image + terms[t].dy * terms[t].row_bytes + terms[t].dx * terms[t].pixel_bytes;
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x0 = 0; x0 < W; x0 += 16) {
        __m512 acc[kVectors];
        for (int v = 0; v < kVectors; ++v) acc[v] = init[v];
        for (int64_t t = 0; t < k; ++t) {
          const char* p = first[t] + y * terms[t].row_bytes + x0 * terms[t].pixel_bytes;
          __m512 v[kVectors];
          load_term<kInterleaved, kC>(terms[t], p, 0xffffu, v);
          for (int q = 0; q < kVectors; ++q) acc[q] = _mm512_fmadd_ps(v[q], alpha[t][q], acc[q]);
        }
        pf.step(int(k));
        emit_run<kOut, kInterleaved, kC>(a, out, keystream, perm, y, x0, 16, acc, acc, false);
      }
    }
    return;
  }

  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x0 = 0; x0 < W; x0 += 16) {
      const int64_t n = W - x0 < 16 ? W - x0 : 16;
      __m512 acc[kVectors], flipped[kVectors];
      for (int v = 0; v < kVectors; ++v) acc[v] = init[v], flipped[v] = _mm512_setzero_ps();
      for (int64_t t = 0; t < k; ++t) {
        const RowTerm& term = terms[t];
        const int64_t sy = y + term.dy;
        if (sy < 0 || sy >= term.height) continue;  // a padding row: adds nothing
        // Output pixel x0 + i reads source column x0 + i + dx; flipped, the 16 columns from
        // W - 16 - x0 + dx are loaded in order and lane j lands on output pixel x0 + 15 - j.
        const int64_t sx = term.flip ? W - 16 - x0 + term.dx : x0 + term.dx;
        const uint32_t valid = lanes(-sx, term.width - sx) & (term.flip ? lanes(16 - n, 16) : lanes(0, n));
        if (!valid) continue;
        const char* p = term.image + sy * term.row_bytes + sx * term.pixel_bytes;  // masked lanes stay unread
        __m512 v[kVectors];
        load_term<kInterleaved, kC>(term, p, valid, v);
        if (term.flip) {
          for (int q = 0; q < kVectors; ++q) flipped[q] = _mm512_fmadd_ps(v[q], alpha[t][q], flipped[q]);
        } else {
          for (int q = 0; q < kVectors; ++q) acc[q] = _mm512_fmadd_ps(v[q], alpha[t][q], acc[q]);
        }
      }
      pf.step(int(k));
      emit_run<kOut, kInterleaved, kC>(a, out, keystream, perm, y, x0, n, acc, flipped, any_flip);
    }
  }
}

template <OutType kOut, bool kInterleaved, int kC>
INSTAHIDE_AVX512 void encode_rows(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* keystream,
                                  int64_t stride) {
  const Permutations& perm = permutations();
  const Factors<kInterleaved, kC> factors(a);
  prefetch_tables(a, r0, r1);
  prefetch_tables(a, r0 + 1, r1);
  for (int64_t r = r0; r < r1; ++r) {
    prefetch_tables(a, r + 2, r1);  // read by plan_prefetch at the next row and by encode_row after it
    Prefetcher pf;
    plan_prefetch(a, r + 1, r1, pf);
    encode_row<kOut, kInterleaved, kC>(a, r, keystream + (r - r0) * stride, perm, factors, pf);
    pf.finish();
  }
}

// Whether the private images (and so every source) hold interleaved runs of 3 channels.
bool interleaved_runs(const ImageSource& s) {
  return s.channels == 3 && (s.image_offset || (s.stride_c == 1 && s.stride_w == 3));
}

template <OutType kOut>
INSTAHIDE_AVX512 void encode_rows_of(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* keystream,
                                     int64_t stride) {
  if (interleaved_runs(a.sources[0])) return encode_rows<kOut, true, 3>(a, r0, r1, keystream, stride);
  switch (a.sources[0].channels) {
    case 1: return encode_rows<kOut, false, 1>(a, r0, r1, keystream, stride);
    case 2: return encode_rows<kOut, false, 2>(a, r0, r1, keystream, stride);
    case 3: return encode_rows<kOut, false, 3>(a, r0, r1, keystream, stride);
    default: return encode_rows<kOut, false, 4>(a, r0, r1, keystream, stride);
  }
}

}  // namespace

INSTAHIDE_AVX512_TARGET
void encode_rows_avx512(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* keystream, int64_t stride) {
  switch (a.out_type) {
    case OutType::kFloat32: encode_rows_of<OutType::kFloat32>(a, r0, r1, keystream, stride); break;
    case OutType::kFloat16: encode_rows_of<OutType::kFloat16>(a, r0, r1, keystream, stride); break;
    case OutType::kBFloat16: encode_rows_of<OutType::kBFloat16>(a, r0, r1, keystream, stride); break;
  }
}

bool avx512_kernel_available() {
  static const bool cpu_has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                              __builtin_cpu_supports("bmi2");
  return cpu_has;
}

bool avx512_kernel_applies(const EncodeArgs& a) {
  if (!avx512_kernel_available()) return false;
  const ImageSource& first = a.sources[0];
  const int64_t C = first.channels;
  // Interleaved runs of 3 channels, or channel planes (one channel is both).
  const bool interleaved = interleaved_runs(first);
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    if (s.pixel != PixelType::kUint8 && s.pixel != PixelType::kFloat32) return false;
    const bool runs = interleaved ? s.image_offset || (s.stride_c == 1 && s.stride_w == 3)
                                  : (s.image_offset ? C == 1 : s.stride_w == 1);
    if (!runs) return false;
  }
  return !a.out_channels_last || C == 1 || C == 3;
}

#else  // no AVX-512 kernel in this build

bool avx512_kernel_available() { return false; }
bool avx512_kernel_applies(const EncodeArgs&) { return false; }
void encode_rows_avx512(const EncodeArgs&, int64_t, int64_t, const uint8_t*, int64_t) {}

#endif

}  // namespace cpu
}  // namespace instahide
