// Python-free test driver of the CPU core, built with AddressSanitizer and
// UndefinedBehaviorSanitizer (or ThreadSanitizer) by tests/test_sanitizers.py:
//
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
//       -I csrc/core csrc/tests/core_sanitize.cpp csrc/core/encode_cpu.cpp csrc/core/encode_cpu_avx512.cpp
//       csrc/core/thread_pool.cpp
//       -o core_sanitize -pthread && ./core_sanitize [cases] [threads-only]
//
// Random cases of every layout (strides with gaps, negative strides), pixel type, output type
// and layout, sign mode, channel count, padding beyond the image, flips, empty batches and a
// packed public pool; every source buffer is allocated to its exact extent, so a read outside
// it is a sanitizer report. Outputs are checked against a double-precision reference here;
// invalid arguments must throw std::invalid_argument; concurrent callers and thread-count
// changes must give the serial results. Cases alternate between the CPU's two row kernels (the
// AVX-512 one where the CPU has it, and the portable one).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "encode.h"
#include "thread_pool.h"

using namespace instahide;

namespace {

int g_failed = 0;

void fail(const std::string& what) {
  if (g_failed < 20) std::printf("FAILED: %s\n", what.c_str());
  ++g_failed;
}

float half_to_float(uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  float v = exponent == 0 ? std::ldexp(float(mantissa), -24)
            : exponent == 31 ? (mantissa ? NAN : INFINITY)
                             : std::ldexp(float(mantissa | 1024), exponent - 25);
  return (h & 0x8000) ? -v : v;
}

float bfloat_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// One random encode call with its own buffers (exact extents) and a reference.
struct Case {
  EncodeArgs args;
  std::vector<uint8_t> pixels, pool_pixels;
  std::vector<int64_t> pool_offset, index, row_id;
  std::vector<int32_t> pool_size, offset;
  std::vector<float> lam;
  std::vector<uint8_t> flip;
  std::vector<uint8_t> out;
  int64_t C = 0, H = 0, W = 0;
  int64_t dims[4] = {};  // private images (N, C, H, W) in logical order
  int64_t strides[4] = {};  // in elements
  int64_t base = 0;  // element index of image 0, pixel (0, 0, 0) within `pixels`
};

// Points the args of `c` at its own buffers (after a copy).
void bind(Case& c) {
  EncodeArgs& a = c.args;
  a.sources[0].data = c.pixels.data() + c.base * int64_t(a.sources[0].pixel == PixelType::kUint8 ? 1 : 4);
  if (!c.pool_offset.empty()) {
    a.sources[1].data = c.pool_pixels.data();
    a.sources[1].image_offset = c.pool_offset.data(), a.sources[1].image_size = c.pool_size.data();
  }
  a.row_id = c.row_id.data(), a.index = c.index.data(), a.lam = c.lam.data();
  a.offset = c.offset.data(), a.flip = c.flip.data(), a.out = c.out.data();
}

template <typename T>
T pick(std::mt19937_64& rng, std::initializer_list<T> values) {
  return values.begin()[rng() % values.size()];
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return lo + int64_t(rng() % uint64_t(hi - lo + 1));
}

size_t pixel_size(PixelType p) { return p == PixelType::kUint8 ? 1 : 4; }

void fill_pixels(std::vector<uint8_t>& bytes, PixelType p, std::mt19937_64& rng) {
  if (p == PixelType::kUint8) {
    for (auto& b : bytes) b = uint8_t(rng());
  } else {
    std::normal_distribution<float> normal(0.5f, 0.5f);
    for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
      float v = normal(rng);
      std::memcpy(&bytes[i], &v, 4);
    }
  }
}

Case make_case(std::mt19937_64& rng) {
  Case c;
  EncodeArgs& a = c.args;
  const int64_t n = uniform(rng, 1, 9);
  c.C = uniform(rng, 1, 4);
  c.H = pick<int64_t>(rng, {1, 2, 3, 5, 8, 13, 17, 40});
  c.W = pick<int64_t>(rng, {1, 2, 3, 5, 8, 13, 17, 33});
  a.k = int(uniform(rng, 1, 8));
  const bool cross = a.k > 1 && rng() % 3 == 0;
  a.private_terms = cross ? int(uniform(rng, 1, a.k - 1)) : a.k;
  a.rows = rng() % 8 == 0 ? 0 : uniform(rng, 1, 12);

  // Private images: a permutation of the axes, optional gaps, optional reversed axes.
  ImageSource& s = a.sources[0];
  s.pixel = rng() % 2 ? PixelType::kUint8 : PixelType::kFloat32;
  c.dims[0] = n, c.dims[1] = c.C, c.dims[2] = c.H, c.dims[3] = c.W;
  const int orders[4][4] = {{0, 1, 2, 3}, {0, 2, 3, 1}, {1, 0, 2, 3}, {2, 0, 3, 1}};  // memory order, outer first
  const int* order = orders[rng() % 4];
  int64_t step = 1;
  for (int i = 3; i >= 0; --i) {
    const int axis = order[i];
    c.strides[axis] = step;
    step *= c.dims[axis] + (rng() % 4 == 0 ? 1 : 0);  // a gap after some axes
  }
  const int64_t extent = step;
  for (int axis = 0; axis < 4; ++axis)
    if (rng() % 5 == 0) {  // reversed axis: starts at its last element
      c.base += (c.dims[axis] - 1) * c.strides[axis];
      c.strides[axis] = -c.strides[axis];
    }
  c.pixels.resize(size_t(extent) * pixel_size(s.pixel));
  fill_pixels(c.pixels, s.pixel, rng);
  s.data = c.pixels.data() + c.base * int64_t(pixel_size(s.pixel));
  s.count = n, s.channels = c.C, s.height = c.H, s.width = c.W;
  s.stride_n = c.strides[0], s.stride_c = c.strides[1], s.stride_h = c.strides[2], s.stride_w = c.strides[3];
  for (int ch = 0; ch < 4; ++ch) {
    s.scale[ch] = s.pixel == PixelType::kUint8 ? float(1 / 255.0 / (0.2 + 0.1 * ch)) : 1.0f;
    s.shift[ch] = float(0.1 * ch);
  }

  // Public pool: packed channels-last images at least as large as the patch.
  const int64_t m = uniform(rng, 1, 4);
  if (cross) {
    ImageSource& p = a.sources[1];
    int64_t total = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t h = int32_t(c.H + uniform(rng, 0, 5)), w = int32_t(c.W + uniform(rng, 0, 5));
      c.pool_offset.push_back(total);
      c.pool_size.push_back(h), c.pool_size.push_back(w);
      total += int64_t(h) * w * c.C;
    }
    p.pixel = rng() % 2 ? PixelType::kUint8 : PixelType::kFloat32;
    c.pool_pixels.resize(size_t(total) * pixel_size(p.pixel));
    fill_pixels(c.pool_pixels, p.pixel, rng);
    p.data = c.pool_pixels.data();
    p.count = m, p.channels = c.C;
    p.image_offset = c.pool_offset.data(), p.image_size = c.pool_size.data(), p.packed_elements = total;
    p.stride_c = 1, p.stride_w = c.C, p.height = p.width = 1;
    for (int ch = 0; ch < 4; ++ch) p.scale[ch] = 0.01f * float(ch + 1), p.shift[ch] = 0.05f;
  }

  // Term tables: padding up to beyond the image, flips, row ids far from 0.
  const int64_t pad = pick<int64_t>(rng, {0, 1, 3, 50});
  const bool hflip = rng() % 2;
  for (int64_t r = 0; r < a.rows; ++r) {
    c.row_id.push_back(rng() % 4 == 0 ? int64_t(rng() >> 20) : r);
    std::vector<float> g(size_t(a.k));
    float sum = 0;
    for (auto& v : g) sum += v = float(uniform(rng, 1, 1000));
    for (int t = 0; t < a.k; ++t) {
      c.lam.push_back(g[size_t(t)] / sum);
      if (t < a.private_terms) {
        c.index.push_back(uniform(rng, 0, n - 1));
        c.offset.push_back(int32_t(uniform(rng, -pad, pad))), c.offset.push_back(int32_t(uniform(rng, -pad, pad)));
        c.flip.push_back(hflip && rng() % 2);
      } else {
        const int64_t i = uniform(rng, 0, m - 1);
        c.index.push_back(i);
        c.offset.push_back(int32_t(uniform(rng, 0, c.pool_size[size_t(2 * i)] - c.H)));
        c.offset.push_back(int32_t(uniform(rng, 0, c.pool_size[size_t(2 * i + 1)] - c.W)));
        c.flip.push_back(0);
      }
    }
  }
  for (auto& b : a.mask_key) b = uint8_t(rng());
  a.epoch = uint32_t(rng());
  a.sign = pick(rng, {SignMode::kFlip, SignMode::kAbs, SignMode::kNone});
  a.out_type = pick(rng, {OutType::kFloat32, OutType::kFloat16, OutType::kBFloat16});
  a.out_channels_last = rng() % 2;
  a.out_height = c.H, a.out_width = c.W;
  const size_t out_size = a.out_type == OutType::kFloat32 ? 4 : 2;
  c.out.assign(size_t(a.rows * c.C * c.H * c.W) * out_size, 0xAB);
  bind(c);
  return c;
}

double read_pixel(const ImageSource& s, const void* data, int64_t element) {
  if (s.pixel == PixelType::kUint8) return static_cast<const uint8_t*>(data)[element];
  return static_cast<const float*>(data)[element];
}

// Checks the output of `c` against a double-precision reference; returns the failures.
int check_case(const Case& c, const std::string& label) {
  const EncodeArgs& a = c.args;
  const int64_t C = c.C, H = c.H, W = c.W, elements = C * H * W;
  std::vector<int8_t> signs(size_t(a.rows * elements), 1);
  if (a.sign == SignMode::kFlip && a.rows) mask_cpu(a.mask_key, a.epoch, a.row_id, a.rows, elements, signs.data(), 1);
  int failures = 0;
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          double m = 0, magnitude = 0;
          for (int t = 0; t < a.k; ++t) {
            const int64_t at = r * a.k + t, i = a.index[at];
            const bool pub = t >= a.private_terms;
            const ImageSource& s = a.sources[pub ? 1 : 0];
            const int64_t ys = y + a.offset[2 * at], xs = (a.flip[at] ? W - 1 - x : x) + a.offset[2 * at + 1];
            const int64_t h = pub ? s.image_size[2 * i] : H, w = pub ? s.image_size[2 * i + 1] : W;
            double v = 0;
            if (ys >= 0 && ys < h && xs >= 0 && xs < w) {
              v = pub ? read_pixel(s, s.data, s.image_offset[i] + (ys * w + xs) * C + ch)
                      : read_pixel(s, s.data, i * s.stride_n + ch * s.stride_c + ys * s.stride_h + xs * s.stride_w);
            }
            const double term = a.lam[at] * (v * s.scale[ch] - s.shift[ch]);
            m += term;
            magnitude += a.lam[at] * (std::fabs(v * s.scale[ch]) + std::fabs(s.shift[ch]));
          }
          const int64_t j = ch * H * W + y * W + x;
          double expected = a.sign == SignMode::kAbs ? std::fabs(m) : m * signs[size_t(r * elements + j)];
          const int64_t o = r * elements + (a.out_channels_last ? (y * W + x) * C + ch : j);
          double got;
          double relative = 1e-5;
          if (a.out_type == OutType::kFloat32) {
            got = reinterpret_cast<const float*>(c.out.data())[o];
          } else {
            const uint16_t bits = reinterpret_cast<const uint16_t*>(c.out.data())[o];
            got = a.out_type == OutType::kFloat16 ? half_to_float(bits) : bfloat_to_float(bits);
            relative = a.out_type == OutType::kFloat16 ? 1.0 / 1024 : 1.0 / 128;
          }
          const double tolerance = relative * std::fabs(expected) + 1e-5 * magnitude + 1e-7;
          if (!(std::fabs(got - expected) <= tolerance)) {
            if (failures == 0)
              fail(label + ": row " + std::to_string(r) + " c" + std::to_string(ch) + " y" + std::to_string(y) + " x" +
                   std::to_string(x) + ": got " + std::to_string(got) + ", expected " + std::to_string(expected));
            ++failures;
          }
        }
  return failures;
}

template <typename F>
void expect_invalid(const std::string& what, F&& call) {
  try {
    call();
    fail(what + ": no exception");
  } catch (const std::invalid_argument&) {
  } catch (const std::exception& e) {
    fail(what + ": unexpected exception " + e.what());
  }
}

// Every broken argument must throw std::invalid_argument before the kernel reads anything.
void check_invalid_arguments(std::mt19937_64& rng, int64_t& checks) {
  Case c = make_case(rng);
  while (c.args.rows == 0 || c.args.private_terms == c.args.k) c = make_case(rng);
  auto run = [&](const std::string& what, const std::function<void(EncodeArgs&)>& edit) {
    EncodeArgs a = c.args;
    edit(a);
    expect_invalid(what, [&] { encode_cpu(a, 1); });
    ++checks;
  };
  const int kp = c.args.private_terms;
  std::vector<int64_t> index = c.index;
  std::vector<float> lam = c.lam;
  std::vector<int64_t> rows = c.row_id, pool_offset = c.pool_offset;
  run("k = 0", [](EncodeArgs& a) { a.k = 0; });
  run("k = 17", [](EncodeArgs& a) { a.k = kMaxTerms + 1; });
  run("private_terms = 0", [](EncodeArgs& a) { a.private_terms = 0; });
  run("rows < 0", [](EncodeArgs& a) { a.rows = -1; });
  run("empty window", [](EncodeArgs& a) { a.out_height = 0; });
  run("huge window", [](EncodeArgs& a) { a.out_height = int64_t(1) << 40, a.out_width = int64_t(1) << 40; });
  run("5 channels", [](EncodeArgs& a) { a.sources[0].channels = 5; });
  run("no images", [](EncodeArgs& a) { a.sources[0].count = 0; });
  run("null output", [](EncodeArgs& a) { a.out = nullptr; });
  run("null index", [](EncodeArgs& a) { a.index = nullptr; });
  run("bad sign", [](EncodeArgs& a) { a.sign = SignMode(7); });
  run("bad out type", [](EncodeArgs& a) { a.out_type = OutType(9); });
  run("overflowing strides", [](EncodeArgs& a) { a.sources[0].count += 2, a.sources[0].stride_n = INT64_MAX / 2; });
  run("pool channels differ", [](EncodeArgs& a) { a.sources[1].channels = a.sources[0].channels % 4 + 1; });
  run("pool image outside its buffer", [&](EncodeArgs& a) {
    pool_offset = c.pool_offset;
    pool_offset.back() = c.args.sources[1].packed_elements;
    a.sources[1].image_offset = pool_offset.data();
  });
  run("pool offset near INT64_MAX", [&](EncodeArgs& a) {
    pool_offset = c.pool_offset;
    pool_offset[0] = INT64_MAX - 1;
    a.sources[1].image_offset = pool_offset.data();
  });
  for (int64_t bad : {int64_t(-1), c.args.sources[0].count, INT64_MIN, INT64_MAX})
    run("private index " + std::to_string(bad), [&](EncodeArgs& a) {
      index = c.index;
      index[size_t(c.args.k * (c.args.rows - 1))] = bad;
      a.index = index.data();
    });
  run("public index = pool size", [&](EncodeArgs& a) {
    index = c.index;
    index[size_t(kp)] = c.args.sources[1].count;
    a.index = index.data();
  });
  for (float bad : {NAN, INFINITY, -INFINITY})
    run("lam " + std::to_string(bad), [&](EncodeArgs& a) {
      lam = c.lam;
      lam[0] = bad;
      a.lam = lam.data();
    });
  std::vector<int32_t> offset;
  for (const int32_t dy : {-1, int32_t(1) << 30})  // above, and far below, the public image
    run("public patch outside its image, dy " + std::to_string(dy), [&](EncodeArgs& a) {
      offset = c.offset;
      offset[size_t(2 * kp)] = dy;  // row 0's first public term (its tables are row 0's when not by row id)
      a.offset = offset.data();
      a.patches_inside = true;
    });
  run("negative row id", [&](EncodeArgs& a) {
    rows = c.row_id;
    rows.back() = -5;
    a.row_id = rows.data();
  });
  expect_invalid("mask of 2^41 elements", [] { mask_cpu(nullptr, 0, nullptr, 0, int64_t(1) << 41, nullptr, 1); });
  expect_invalid("mask rows < 0", [] { mask_cpu(nullptr, 0, nullptr, -1, 8, nullptr, 1); });
  uint8_t key[32] = {}, nonce[12] = {};
  expect_invalid("keystream wraps", [&] { chacha20_keystream(key, nonce, 0xffffffffu, 2, nullptr); });
  expect_invalid("keystream blocks < 0", [&] { chacha20_keystream(key, nonce, 0, -1, nullptr); });
  checks += 4;
  // Offsets anywhere are memory-safe: windows and patches read 0 outside their image (the rule
  // that public patches lie inside is the Python layer's).
  for (int32_t far : {-1, 1 << 20, INT32_MIN, INT32_MAX}) {
    Case d = c;
    for (int64_t r = 0; r < d.args.rows; ++r)
      for (int t = 0; t < d.args.k; ++t) d.offset[size_t(2 * (r * d.args.k + t) + (t + r) % 2)] = far;
    bind(d);
    encode_cpu(d.args, 2);
    check_case(d, "offsets at " + std::to_string(far));
    ++checks;
  }
}

// Concurrent callers, each with its own cases, while another thread changes the default thread
// count: every output must equal the serial one.
void check_concurrency(std::mt19937_64& rng, int callers, int rounds, int64_t& checks) {
  std::vector<Case> cases;
  std::vector<std::vector<uint8_t>> serial;
  for (int i = 0; i < callers * 4; ++i) {
    cases.push_back(make_case(rng));
    bind(cases.back());
    encode_cpu(cases.back().args, 1);
    serial.push_back(cases.back().out);
  }
  std::atomic<bool> stop{false};
  std::thread changer([&] {
    for (int n = 0; !stop.load(); n = (n + 1) % 5) {
      set_default_threads(n);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < rounds; ++round)
        for (size_t i = size_t(t) * 4; i < size_t(t) * 4 + 4; ++i) {
          Case& c = cases[i];
          std::fill(c.out.begin(), c.out.end(), uint8_t(0xCD));
          encode_cpu(c.args, round % 3);  // 0: the default count, changing under us
          if (c.out != serial[i]) ++mismatches;
        }
    });
  for (auto& t : threads) t.join();
  stop = true;
  changer.join();
  set_default_threads(0);
  if (mismatches) fail("concurrent callers: " + std::to_string(mismatches.load()) + " outputs differ from serial");
  checks += int64_t(callers) * rounds * 4;
}

}  // namespace

// The call of `c` with its tables scattered over an epoch's tables and looked up by row id
// (row ids drawn in [0, 3 * rows], repeats allowed): bit-identical to the same rows gathered in
// order; and the label mixer on the same tables, against sums in term order.
void check_tables_by_row_id(const Case& original, std::mt19937_64& rng, int64_t& checks) {
  Case c = original;
  bind(c);
  EncodeArgs& a = c.args;
  const int k = a.k;
  const int64_t table_rows = 3 * a.rows + 1;
  std::vector<int64_t> epoch_index(size_t(table_rows * k), 0);
  std::vector<float> epoch_lam(size_t(table_rows * k), 0.25f);
  std::vector<int32_t> epoch_offset(size_t(table_rows * k * 2), 0);
  std::vector<uint8_t> epoch_flip(size_t(table_rows * k), 0);
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t id = uniform(rng, 0, table_rows - 1);
    c.row_id[size_t(r)] = id;
    for (int64_t e = 0; e < k; ++e) {
      epoch_index[size_t(id * k + e)] = c.index[size_t(r * k + e)];
      epoch_lam[size_t(id * k + e)] = c.lam[size_t(r * k + e)];
      epoch_flip[size_t(id * k + e)] = c.flip[size_t(r * k + e)];
      for (int d = 0; d < 2; ++d) epoch_offset[size_t((id * k + e) * 2 + d)] = c.offset[size_t((r * k + e) * 2 + d)];
    }
  }
  for (int64_t r = 0; r < a.rows; ++r) {  // the in-order tables: what each row id finally holds
    const int64_t id = c.row_id[size_t(r)];
    for (int64_t e = 0; e < k; ++e) {
      c.index[size_t(r * k + e)] = epoch_index[size_t(id * k + e)];
      c.lam[size_t(r * k + e)] = epoch_lam[size_t(id * k + e)];
      c.flip[size_t(r * k + e)] = epoch_flip[size_t(id * k + e)];
      for (int d = 0; d < 2; ++d) c.offset[size_t((r * k + e) * 2 + d)] = epoch_offset[size_t((id * k + e) * 2 + d)];
    }
  }
  encode_cpu(a, 2);
  EncodeArgs by_id = a;
  std::vector<uint8_t> out(c.out.size(), 0xCD);
  by_id.tables_by_row_id = true, by_id.table_rows = table_rows;
  by_id.index = epoch_index.data(), by_id.lam = epoch_lam.data();
  by_id.offset = epoch_offset.data(), by_id.flip = epoch_flip.data(), by_id.out = out.data();
  encode_cpu(by_id, 3);
  if (out != c.out) fail("tables by row id: output differs from the gathered tables");
  ++checks;
  // Labels: class ids per private image; every entry summed in term order in double.
  const int64_t n = a.sources[0].count, classes = uniform(rng, 1, 12);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (auto& l : labels) l = uniform(rng, 0, classes - 1);
  std::vector<float> soft(static_cast<size_t>(a.rows * classes), -1.0f);
  auto class_ids = [&](int64_t count) {
    LabelArgs l;
    l.class_ids = labels.data(), l.label_count = count, l.classes = classes, l.out = soft.data();
    return l;
  };
  mix_labels_cpu(by_id, class_ids(n));
  for (int64_t r = 0; r < a.rows; ++r) {
    std::vector<double> sums(static_cast<size_t>(classes), 0.0);
    for (int t = 0; t < a.private_terms; ++t)
      sums[size_t(labels[size_t(c.index[size_t(r * k + t)])])] += double(c.lam[size_t(r * k + t)]);
    for (int64_t j = 0; j < classes; ++j)
      if (soft[size_t(r * classes + j)] != float(sums[size_t(j)])) fail("mix_labels: row " + std::to_string(r));
  }
  ++checks;
  if (a.rows == 0) return;
  EncodeArgs past = by_id;
  std::vector<int64_t> ids = c.row_id;
  ids[size_t(uniform(rng, 0, a.rows - 1))] = table_rows;  // one past the tables
  past.row_id = ids.data();
  expect_invalid("row id past the tables", [&] { encode_cpu(past, 1); });
  expect_invalid("labels: row id past the tables", [&] { mix_labels_cpu(past, class_ids(n)); });
  labels[size_t(c.index[0])] = classes;  // row 0, term 0 reads a class id out of range
  expect_invalid("labels: class id out of range", [&] { mix_labels_cpu(a, class_ids(n)); });
  expect_invalid("labels: index past the labels", [&] { mix_labels_cpu(a, class_ids(0)); });
  checks += 4;
}

int main(int argc, char** argv) {
  const int64_t count = argc > 1 ? std::atoll(argv[1]) : 600;
  const bool threads_only = argc > 2 && std::string(argv[2]) == "threads-only";
  std::mt19937_64 rng(20261127);
  int64_t cases = 0, checks = 0;
  if (!threads_only) {
    for (int64_t i = 0; i < count; ++i) {
      Case c = make_case(rng);
      const int threads = int(i % 4);
      encode_cpu(c.args, threads, nullptr, i % 2 ? CpuKernel::kPortable : CpuKernel::kAuto);
      check_case(c, "case " + std::to_string(i));
      if (i % 4 == 0) check_tables_by_row_id(c, rng, checks);
      ++cases;
    }
    for (int i = 0; i < 20; ++i) check_invalid_arguments(rng, checks);
  }
  check_concurrency(rng, 3, threads_only ? 20 : 5, checks);
  std::printf("%lld cases, %lld argument and concurrency checks, %d failed\n", (long long)cases, (long long)checks,
              g_failed);
  return g_failed ? 1 : 0;
}
