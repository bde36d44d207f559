// CPU kernel of the fused encoder: one pass per output row reads the k source windows at
// their own pixel type, normalizes, mixes, applies the sign mask and writes the output type.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "chacha20.h"
#include "encode.h"
#include "float_convert.h"
#include "thread_pool.h"

// Hot loops get clones for AVX-512 and AVX2 hosts, picked at load time, so that one portable
// build runs at full vector width where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(INSTAHIDE_NO_CLONES)
#define INSTAHIDE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define INSTAHIDE_VECTOR_CLONES
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "keystream bytes are read as little-endian words");

namespace instahide {
namespace {

constexpr int kLanes = 16;         // ChaCha20 blocks computed side by side
constexpr int64_t kRowsPerTask = 16;
constexpr int64_t kKeystreamPad = 8;  // lets 64-bit loads at the row's last byte stay in bounds

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

inline float load_pixel(const uint8_t* p) { return float(*p); }
inline float load_pixel(const float* p) { return *p; }

// Everything one term of one row needs.
struct Term {
  const ImageSource* source;
  const char* image;   // the term's image (bytes)
  int64_t dy, dx;
  bool flip;
  bool contiguous;     // the source's pixel rows have the accumulator's layout
  float alpha[kMaxChannels];  // lam * scale[c]
};

// Per-thread buffers, reused across rows.
struct Scratch {
  std::vector<float> acc, acc_flipped, alpha_rep;
  std::vector<uint32_t> sign;
  std::vector<uint8_t> keystream;
};

template <typename T>
inline const T* pixel_ptr(const Term& t, int64_t ys, int64_t xs, int64_t c) {
  const ImageSource& s = *t.source;
  return reinterpret_cast<const T*>(t.image) + ys * s.stride_h + xs * s.stride_w + c * s.stride_c;
}

// acc[p] += alpha * source pixel (p + dx), p in [lo, hi): one pixel row of one term.
// `interleaved`: acc holds pixel rows as x*C + c, else c*W + x.
template <typename T>
inline void accumulate(float* acc, const Term& t, const float* alpha_rep, int64_t ys, int64_t lo, int64_t hi,
                       int64_t C, int64_t W, bool interleaved) {
  if (t.contiguous && interleaved) {
    const T* p = pixel_ptr<T>(t, ys, lo + t.dx, 0);
    float* a = acc + lo * C;
    const float* al = alpha_rep + lo * C;
    const int64_t n = (hi - lo) * C;
    for (int64_t i = 0; i < n; ++i) a[i] += al[i] * load_pixel(p + i);
  } else if (t.contiguous) {
    for (int64_t c = 0; c < C; ++c) {
      const T* p = pixel_ptr<T>(t, ys, lo + t.dx, c);
      float* a = acc + c * W + lo;
      const float al = t.alpha[c];
      for (int64_t i = 0; i < hi - lo; ++i) a[i] += al * load_pixel(p + i);
    }
  } else {
    const int64_t sw = t.source->stride_w;
    for (int64_t c = 0; c < C; ++c) {
      const T* p = pixel_ptr<T>(t, ys, lo + t.dx, c);
      const float al = t.alpha[c];
      for (int64_t i = 0; i < hi - lo; ++i) {
        int64_t x = lo + i;
        acc[interleaved ? x * C + c : c * W + x] += al * load_pixel(p + i * sw);
      }
    }
  }
}

struct ToHalf { static uint16_t go(uint32_t b) { return float_to_float16(b); } };
struct ToBFloat { static uint16_t go(uint32_t b) { return float_to_bfloat16(b); } };
struct ToFloat { static float go(uint32_t b) { return bits_float(b); } };

// Writes pixel row y: out = convert((acc & keep) ^ sign), from the accumulator's layout to
// the output's.
template <typename Conv, typename Out>
inline void store_row(Out* out_image, const float* acc, const uint32_t* sign, uint32_t keep, int64_t y,
                      int64_t C, int64_t H, int64_t W, bool acc_interleaved, bool out_interleaved) {
  const uint32_t* a = reinterpret_cast<const uint32_t*>(acc);
  if (out_interleaved) {
    Out* o = out_image + y * W * C;
    if (acc_interleaved) {
      for (int64_t i = 0; i < W * C; ++i) o[i] = Conv::go((a[i] & keep) ^ sign[i]);
    } else {
      for (int64_t x = 0; x < W; ++x)
        for (int64_t c = 0; c < C; ++c) o[x * C + c] = Conv::go((a[c * W + x] & keep) ^ sign[c * W + x]);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      Out* o = out_image + (c * H + y) * W;
      if (acc_interleaved) {
        if (C == 3) {
          for (int64_t x = 0; x < W; ++x) o[x] = Conv::go((a[x * 3 + c] & keep) ^ sign[x * 3 + c]);
        } else {
          for (int64_t x = 0; x < W; ++x) o[x] = Conv::go((a[x * C + c] & keep) ^ sign[x * C + c]);
        }
      } else {
        const uint32_t* ac = a + c * W;
        const uint32_t* sc = sign + c * W;
        for (int64_t x = 0; x < W; ++x) o[x] = Conv::go((ac[x] & keep) ^ sc[x]);
      }
    }
  }
}

// Sign words of pixel row y in the accumulator's layout: bit j = c*H*W + y*W + x of the row's
// keystream, as 0 or 0x80000000.
inline void sign_row(uint32_t* sign, const uint8_t* keystream, int64_t y, int64_t C, int64_t H, int64_t W,
                     bool interleaved) {
  for (int64_t c = 0; c < C; ++c) {
    const int64_t j0 = c * H * W + y * W;
    for (int64_t x0 = 0; x0 < W; x0 += 32) {
      const int64_t j = j0 + x0;
      uint64_t word;
      std::memcpy(&word, keystream + (j >> 3), 8);
      const uint32_t bits = uint32_t(word >> (j & 7));
      const int64_t n = std::min<int64_t>(32, W - x0);
      if (interleaved) {
        for (int64_t i = 0; i < n; ++i) sign[(x0 + i) * C + c] = ((bits >> i) & 1u) << 31;
      } else {
        for (int64_t i = 0; i < n; ++i) sign[c * W + x0 + i] = ((bits >> i) & 1u) << 31;
      }
    }
  }
}

template <typename Conv, typename Out>
__attribute__((always_inline)) inline void encode_row(const EncodeArgs& args, int64_t r, const uint8_t* keystream, Scratch& s) {
  const ImageSource& priv = args.sources[0];
  const int64_t C = priv.channels, H = args.out_height, W = args.out_width;
  const int64_t k = args.k;
  const bool interleaved = priv.stride_c == 1 && priv.stride_w == C;

  Term terms[kMaxTerms];
  float beta[kMaxChannels] = {};
  bool any_flip = false;
  for (int64_t t = 0; t < k; ++t) {
    Term& term = terms[t];
    const ImageSource& src = args.sources[t < args.private_terms ? 0 : 1];
    const int64_t at = r * k + t;
    term.source = &src;
    const int64_t elem = src.pixel == PixelType::kUint8 ? 1 : 4;
    term.image = static_cast<const char*>(src.data) + args.index[at] * src.stride_n * elem;
    term.dy = args.offset[2 * at];
    term.dx = args.offset[2 * at + 1];
    term.flip = args.flip[at] != 0;
    term.contiguous = interleaved ? (src.stride_c == 1 && src.stride_w == C) : src.stride_w == 1;
    any_flip |= term.flip;
    const float lam = args.lam[at];
    for (int64_t c = 0; c < C; ++c) {
      term.alpha[c] = lam * src.scale[c];
      beta[c] += lam * src.shift[c];
    }
    if (interleaved)
      for (int64_t x = 0; x < W; ++x)
        for (int64_t c = 0; c < C; ++c) s.alpha_rep[(t * W + x) * C + c] = term.alpha[c];
  }

  uint32_t keep = args.sign == SignMode::kAbs ? 0x7fffffffu : 0xffffffffu;
  void* out_image = static_cast<char*>(args.out) +
                    r * C * H * W * (args.out_type == OutType::kFloat32 ? 4 : 2);
  float* acc = s.acc.data();
  float* acc_flipped = s.acc_flipped.data();
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t x = 0; x < W; ++x) acc[interleaved ? x * C + c : c * W + x] = -beta[c];
    if (any_flip) std::fill(acc_flipped, acc_flipped + C * W, 0.0f);
    for (int64_t t = 0; t < k; ++t) {
      const Term& term = terms[t];
      const ImageSource& src = *term.source;
      const int64_t ys = y + term.dy;
      if (ys < 0 || ys >= src.height) continue;  // the whole pixel row reads padding (0)
      // Window position p reads source column p + dx; flipped windows store position p at
      // output column W-1-p, so they gather into acc_flipped and get mirrored once below.
      const int64_t lo = std::max<int64_t>(0, -term.dx);
      const int64_t hi = std::min<int64_t>(W, src.width - term.dx);
      if (lo >= hi) continue;
      float* target = term.flip ? acc_flipped : acc;
      const float* alpha_rep = s.alpha_rep.data() + t * W * C;
      if (src.pixel == PixelType::kUint8)
        accumulate<uint8_t>(target, term, alpha_rep, ys, lo, hi, C, W, interleaved);
      else
        accumulate<float>(target, term, alpha_rep, ys, lo, hi, C, W, interleaved);
    }
    if (any_flip) {
      if (interleaved) {
        for (int64_t x = 0; x < W; ++x)
          for (int64_t c = 0; c < C; ++c) acc[x * C + c] += acc_flipped[(W - 1 - x) * C + c];
      } else {
        for (int64_t c = 0; c < C; ++c)
          for (int64_t x = 0; x < W; ++x) acc[c * W + x] += acc_flipped[c * W + W - 1 - x];
      }
    }
    if (args.sign == SignMode::kFlip) sign_row(s.sign.data(), keystream, y, C, H, W, interleaved);
    store_row<Conv>(static_cast<Out*>(out_image), acc, s.sign.data(), keep, y, C, H, W, interleaved,
                    args.out_channels_last);
  }
}

// Rows [r0, r1) with the keystream of row r at keystream + (r - r0) * stride. One cloned
// function per output type so that the inlined row kernel is compiled for each vector width.
template <typename Conv, typename Out>
__attribute__((always_inline)) inline void encode_rows(const EncodeArgs& args, int64_t r0, int64_t r1,
                                                       const uint8_t* keystream, int64_t stride, Scratch& s) {
  for (int64_t r = r0; r < r1; ++r) encode_row<Conv, Out>(args, r, keystream + (r - r0) * stride, s);
}

INSTAHIDE_VECTOR_CLONES
void encode_rows_float32(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* ks, int64_t stride, Scratch& s) {
  encode_rows<ToFloat, float>(a, r0, r1, ks, stride, s);
}
INSTAHIDE_VECTOR_CLONES
void encode_rows_float16(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* ks, int64_t stride, Scratch& s) {
  encode_rows<ToHalf, uint16_t>(a, r0, r1, ks, stride, s);
}
INSTAHIDE_VECTOR_CLONES
void encode_rows_bfloat16(const EncodeArgs& a, int64_t r0, int64_t r1, const uint8_t* ks, int64_t stride, Scratch& s) {
  encode_rows<ToBFloat, uint16_t>(a, r0, r1, ks, stride, s);
}

void encode_all(const EncodeArgs& args, int num_threads) {
  const ImageSource& priv = args.sources[0];
  const int64_t C = priv.channels, H = args.out_height, W = args.out_width;
  const int64_t bytes = mask_bytes_per_row(C, H, W);
  const int64_t stride = bytes + kKeystreamPad;
  const int64_t tasks = (args.rows + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for(tasks, num_threads, [&](int64_t task) {
    thread_local Scratch s;
    s.acc.resize(size_t(C * W));
    s.acc_flipped.resize(size_t(C * W));
    s.alpha_rep.resize(size_t(args.k * C * W));
    s.sign.assign(size_t(C * W), 0u);
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(args.rows, r0 + kRowsPerTask);
    if (args.sign == SignMode::kFlip) {
      s.keystream.resize(size_t((r1 - r0) * stride));
      mask_keystream(args.mask_key, args.epoch, args.row_id + r0, r1 - r0, bytes, stride, s.keystream.data());
    }
    switch (args.out_type) {
      case OutType::kFloat32: encode_rows_float32(args, r0, r1, s.keystream.data(), stride, s); break;
      case OutType::kFloat16: encode_rows_float16(args, r0, r1, s.keystream.data(), stride, s); break;
      case OutType::kBFloat16: encode_rows_bfloat16(args, r0, r1, s.keystream.data(), stride, s); break;
    }
  });
}

std::string describe(const char* what, int64_t value) { return std::string(what) + " = " + std::to_string(value); }

void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace

void validate(const EncodeArgs& a) {
  check(a.k >= 1 && a.k <= kMaxTerms, describe("k", a.k) + " must be in [1, " + std::to_string(kMaxTerms) + "]");
  check(a.private_terms >= 1 && a.private_terms <= a.k,
        describe("private_terms", a.private_terms) + " must be in [1, k]");
  check(a.rows >= 0, describe("rows", a.rows) + " must be >= 0");
  check(a.out_height > 0 && a.out_width > 0, "the output window must have a positive size");
  const int used = a.private_terms < a.k ? 2 : 1;
  for (int i = 0; i < used; ++i) {
    const ImageSource& s = a.sources[i];
    const char* name = i == 0 ? "private images" : "public images";
    check(s.data != nullptr || s.count == 0, std::string(name) + ": no data");
    check(s.count > 0, std::string(name) + ": the set is empty");
    check(s.channels >= 1 && s.channels <= kMaxChannels,
          std::string(name) + ": " + describe("channels", s.channels) + " must be in [1, 4]");
    check(s.height > 0 && s.width > 0, std::string(name) + ": images must have a positive size");
    check(s.channels == a.sources[0].channels, "public and private images must have the same channel count");
  }
  for (int64_t r = 0; r < a.rows; ++r)
    for (int t = 0; t < a.k; ++t) {
      const int64_t idx = a.index[r * a.k + t];
      const ImageSource& s = a.sources[t < a.private_terms ? 0 : 1];
      if (idx < 0 || idx >= s.count)
        throw std::invalid_argument("keys.index[" + std::to_string(r) + ", " + std::to_string(t) + "] = " +
                                std::to_string(idx) + " is out of range for a set of " + std::to_string(s.count) +
                                " images");
    }
}

void encode_cpu(const EncodeArgs& args, int num_threads) {
  validate(args);
  if (args.rows == 0) return;
  encode_all(args, num_threads);
}

void mask_cpu(const uint8_t key[32], uint32_t epoch, const int64_t* row_id, int64_t rows, int64_t elements_per_row,
              int8_t* out, int num_threads) {
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

void chacha20_keystream(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, int64_t blocks,
                        uint8_t* out) {
  const ChaChaInput in = chacha_input(key, nonce);
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
