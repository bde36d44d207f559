// Host emulation of encode_cuda's kernel against encode_cpu, on random cases of every layout,
// pixel type, output type, sign mode, channel count, packed pool and table lookup: runs the
// kernel's own per-warp code (encode_chunks) on the CPU, a warp's 32 lanes as fibers that
// switch at each warp sync, so that the kernel's index arithmetic and its warp
// synchronization are checked on machines with nvcc but no GPU.
//
//   nvcc -std=c++17 -O1 -I csrc/core csrc/tests/emulate_cuda.cu csrc/core/encode_cpu.cpp \
//        csrc/core/encode_cpu_avx512.cpp csrc/core/thread_pool.cpp -o emulate_cuda && ./emulate_cuda
// (tests/test_cuda_emulation.py does this where nvcc is found.)
[[maybe_unused]] static void lane_sync();
#define INSTAHIDE_HOST_WARP_SYNC() lane_sync()  // the kernel's warp syncs switch lanes here
#include "encode_cuda.cu"

#include <ucontext.h>

#include <cmath>
#include <functional>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

using namespace instahide;

// A warp on the host: its 32 lanes run as fibers of one thread, in order, each up to its next
// warp_sync() (or its end), round after round, so that code between two syncs runs lane by
// lane, as the kernel's may, and a lane reading shared memory that another lane writes
// before the same sync sees the garbage of the previous round. All lanes must reach the same
// syncs (as __syncwarp with all lanes requires).
struct HostWarp {
  ucontext_t scheduler, lane_context[32];
  std::vector<char> stack[32];
  bool done[32];
  int current = 0;
  std::function<void(int)> body;
};
static HostWarp g_warp;

static void lane_main() {
  g_warp.body(g_warp.current);
  g_warp.done[g_warp.current] = true;
}  // returns to the scheduler (uc_link)

static void lane_sync() { swapcontext(&g_warp.lane_context[g_warp.current], &g_warp.scheduler); }

// Runs body(lane) for the 32 lanes of one warp; false if the lanes did not all reach the same
// syncs.
static bool run_warp(std::function<void(int)> body) {
  g_warp.body = std::move(body);
  for (int lane = 0; lane < 32; ++lane) {
    g_warp.stack[lane].resize(1 << 18);
    getcontext(&g_warp.lane_context[lane]);
    g_warp.lane_context[lane].uc_stack.ss_sp = g_warp.stack[lane].data();
    g_warp.lane_context[lane].uc_stack.ss_size = g_warp.stack[lane].size();
    g_warp.lane_context[lane].uc_link = &g_warp.scheduler;
    makecontext(&g_warp.lane_context[lane], lane_main, 0);
    g_warp.done[lane] = false;
  }
  bool converged = true;
  for (;;) {
    for (int lane = 0; lane < 32; ++lane) {
      g_warp.current = lane;
      swapcontext(&g_warp.scheduler, &g_warp.lane_context[lane]);
    }
    const int finished = int(std::count(g_warp.done, g_warp.done + 32, true));
    if (finished == 32) break;
    if (finished != 0) {  // some lanes ended while others wait at a sync: never resumable
      converged = false;
      break;
    }
  }
  return converged;
}

static Shared g_sh;
static int g_word_cases = 0;  // cases that took the word-wide path
static int g_divergent = 0;   // warps whose lanes did not reach the same syncs

// The kernel's own per-warp code (encode_chunks), with the warp's shared memory filled with
// garbage (NaN floats) first to catch reads of unset entries: one warp per chunk (as the
// kernel's grid has it), or every other call one warp for all chunks in turn (as where the
// grid is capped), so that a chunk also starts from the previous chunk's state.
template <typename Out, bool CL, typename U, int kC, bool kWords = false>
void emulate_kernel(const Params& P) {
  static int64_t calls = 0;
  const int64_t stride = ++calls % 2 ? P.items : 1;
  for (int64_t first = 0; first < stride && first < P.items; ++first) {
    std::memset(&g_sh, 0xFF, sizeof(g_sh));
    const bool converged =
        run_warp([&](int lane) { encode_chunks<Out, CL, U, kC, kWords>(P, g_sh, lane, first, stride); });
    g_divergent += !converged;
  }
}

template <typename Out, bool CL>
void emulate_words(const Params& P) {
  switch (P.C) {
    case 1: return emulate_kernel<Out, CL, uint32_t, 1, true>(P);
    case 2: return emulate_kernel<Out, CL, uint32_t, 2, true>(P);
    case 3: return emulate_kernel<Out, CL, uint32_t, 3, true>(P);
    default: return emulate_kernel<Out, CL, uint32_t, 4, true>(P);
  }
}

template <typename Out, bool CL>
void emulate_layout(const Params& P, bool wide) {
  if (wide) return emulate_kernel<Out, CL, uint64_t, 0>(P);
  if (P.words) {
    ++g_word_cases;
    return emulate_words<Out, CL>(P);
  }
  switch (P.C) {
    case 1: return emulate_kernel<Out, CL, uint32_t, 1>(P);
    case 2: return emulate_kernel<Out, CL, uint32_t, 2>(P);
    case 3: return emulate_kernel<Out, CL, uint32_t, 3>(P);
    default: return emulate_kernel<Out, CL, uint32_t, 4>(P);
  }
}

// Returns whether the launch takes the word-wide path.
bool emulate(const EncodeArgs& a, bool force_wide, const LabelArgs* labels) {
  bool wide = false;
  Params P = prepare(a, labels, wide);
  if (a.rows == 0) return false;
  wide |= force_wide;
  P.words &= !force_wide;
  switch (a.out_type) {
    case OutType::kFloat32: a.out_channels_last ? emulate_layout<float, true>(P, wide) : emulate_layout<float, false>(P, wide); break;
    case OutType::kFloat16: a.out_channels_last ? emulate_layout<__half, true>(P, wide) : emulate_layout<__half, false>(P, wide); break;
    case OutType::kBFloat16: a.out_channels_last ? emulate_layout<__nv_bfloat16, true>(P, wide) : emulate_layout<__nv_bfloat16, false>(P, wide); break;
  }
  return P.words;
}

float out_value(const void* out, OutType t, int64_t i) {
  if (t == OutType::kFloat32) return static_cast<const float*>(out)[i];
  uint16_t h = static_cast<const uint16_t*>(out)[i];
  if (t == OutType::kBFloat16) { uint32_t u = uint32_t(h) << 16; float f; memcpy(&f, &u, 4); return f; }
  __half_raw r; r.x = h; return __half2float(__half(r));
}

// A set of images in one of several layouts. The last image is all zeros.
struct ImageSet {
  std::vector<uint8_t> bytes;
  ImageSource src;
  int layout;
};

std::vector<int64_t> g_offsets[2];
std::vector<int32_t> g_sizes[2];

ImageSet make_packed(std::mt19937_64& rng, int slot, int64_t n, int64_t C, int64_t H, int64_t W, bool u8) {
  ImageSet s;
  s.layout = 4;
  const int64_t esz = u8 ? 1 : 4;
  const int64_t N = n + 1;  // the last image is all zeros
  std::uniform_int_distribution<int> grow(0, 6);
  g_offsets[slot].clear(); g_sizes[slot].clear();
  int64_t total = 0;
  for (int64_t i = 0; i < N; ++i) {
    int32_t h = int32_t(H + grow(rng)), w = int32_t(W + grow(rng));
    g_offsets[slot].push_back(total);
    g_sizes[slot].push_back(h); g_sizes[slot].push_back(w);
    total += int64_t(h) * w * C;
  }
  s.bytes.assign(size_t(total * esz + 64), 0);
  std::uniform_real_distribution<float> uf(-2.0f, 2.0f);
  std::uniform_int_distribution<int> ub(0, 255);
  const int64_t zero_start = g_offsets[slot][size_t(n)];
  for (int64_t e = 0; e < zero_start; ++e) {
    if (u8) s.bytes[size_t(e)] = uint8_t(ub(rng));
    else { float f = uf(rng); memcpy(&s.bytes[size_t(e * 4)], &f, 4); }
  }
  s.src.data = s.bytes.data();
  s.src.pixel = u8 ? PixelType::kUint8 : PixelType::kFloat32;
  s.src.count = N;
  s.src.channels = C; s.src.height = 1; s.src.width = 1;
  s.src.stride_n = 0; s.src.stride_c = 1; s.src.stride_h = 0; s.src.stride_w = C;
  s.src.image_offset = g_offsets[slot].data();
  s.src.image_size = g_sizes[slot].data();
  s.src.packed_elements = total;
  for (int c = 0; c < C; ++c) { s.src.scale[c] = (u8 ? 1.0f / 255 : 1.0f) / (0.3f + 0.05f * c); s.src.shift[c] = (0.5f + 0.03f * c) / (0.3f + 0.05f * c); }
  return s;
}

ImageSet make_images(std::mt19937_64& rng, int64_t n, int64_t C, int64_t H, int64_t W, bool u8, int layout) {
  if (layout == 4) return make_packed(rng, 1, n, C, H, W, u8);
  ImageSet s;
  s.layout = layout;
  const int64_t esz = u8 ? 1 : 4;
  const int64_t N = n + 1;
  // layout 4: packed channels-last images of their own sizes (SH..SH+6 x SW..SW+6)
  // layout 0: NCHW, 1: NHWC, 2: NHWC padded rows + reversed rows (negative stride_h), 3: CNHW (channel-major)
  int64_t sn, sc, sh, sw, total, origin = 0;
  if (layout == 0) { sw = 1; sh = W; sc = H * W; sn = C * H * W; total = N * sn; }
  else if (layout == 1) { sc = 1; sw = C; sh = W * C; sn = H * W * C; total = N * sn; }
  else if (layout == 2) { sc = 1; sw = C; int64_t row = W * C + 5; sh = -row; sn = H * row + 3; total = N * sn; origin = (H - 1) * row; }
  else { sw = 1; sh = W; sn = H * W; sc = N * H * W; total = C * sc; }
  s.bytes.assign(size_t(total * esz + 64), 0);
  std::uniform_real_distribution<float> uf(-2.0f, 2.0f);
  std::uniform_int_distribution<int> ub(0, 255);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          int64_t e = origin + i * sn + c * sc + y * sh + x * sw;
          if (u8) s.bytes[size_t(e)] = uint8_t(ub(rng));
          else { float f = uf(rng); memcpy(&s.bytes[size_t(e * 4)], &f, 4); }
        }
  s.src.data = s.bytes.data() + origin * esz;
  s.src.pixel = u8 ? PixelType::kUint8 : PixelType::kFloat32;
  s.src.count = N;
  s.src.channels = C; s.src.height = H; s.src.width = W;
  s.src.stride_n = sn; s.src.stride_c = sc; s.src.stride_h = sh; s.src.stride_w = sw;
  for (int c = 0; c < C; ++c) { s.src.scale[c] = (u8 ? 1.0f / 255 : 1.0f) / (0.2f + 0.05f * c); s.src.shift[c] = (0.4f + 0.03f * c) / (0.2f + 0.05f * c); }
  return s;
}

// Soft labels the emulated kernel wrote (`gpu`, from the tables it got) against
// mix_labels_cpu on the CPU's tables (`a`): bit for bit.
bool labels_match(const EncodeArgs& a, const LabelArgs& labels, const std::vector<float>& gpu) {
  std::vector<float> cpu(size_t(a.rows * labels.classes));
  LabelArgs on_cpu = labels;
  on_cpu.out = cpu.data();
  mix_labels_cpu(a, on_cpu);
  return std::memcmp(cpu.data(), gpu.data(), cpu.size() * 4) == 0;
}

int main() {
  std::mt19937_64 rng(777);
  int failures = 0, cases = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const bool cifar = iter < 8;
    std::uniform_int_distribution<int> d(0, 1000000);
    auto pick = [&](int lo, int hi) { return lo + d(rng) % (hi - lo + 1); };
    const int64_t C = cifar ? 3 : pick(1, 4);
    int64_t H, W, SH, SW;
    if (cifar) { H = W = SH = SW = 32; }
    else {
      int shape = pick(0, 3);
      if (shape == 0) { H = pick(1, 12); W = pick(1, 12); }
      else if (shape == 1) { H = 28; W = 28; }
      else if (shape == 2) { H = pick(20, 45); W = pick(20, 45); }  // often > 1024 pixels: several chunks
      else { H = pick(1, 3); W = pick(300, 1500); }                  // wide rows, chunk boundaries mid-row
      SH = std::max<int64_t>(1, H + pick(-3, 3));
      SW = std::max<int64_t>(1, W + pick(-3, 3));
    }
    const int k = cifar ? 4 : pick(1, 7);
    const int private_terms = cifar ? 2 : pick(1, k);
    const bool u8a = cifar ? true : pick(0, 3) > 0, u8b = cifar ? true : pick(0, 3) > 0;  // mostly uint8: the word-wide path
    const int la = cifar ? 1 : pick(0, 3), lb = cifar ? 4 : pick(0, 4);
    const int64_t na = pick(1, 6), nb = pick(1, 6);
    ImageSet A = make_images(rng, na, C, SH, SW, u8a, la);
    ImageSet B = make_images(rng, nb, C, SH, SW, u8b, lb);
    const int64_t rows = cifar ? 5 : pick(0, 4);
    std::vector<int64_t> row_id(static_cast<size_t>(rows)), index(static_cast<size_t>(rows * k)), index_gpu;
    std::vector<float> lam(size_t(rows * k));
    std::vector<int32_t> offset(size_t(rows * k * 2));
    std::vector<uint8_t> flip(size_t(rows * k));
    const bool bad_index = !cifar && pick(0, 3) == 0;
    for (int64_t r = 0; r < rows; ++r) {
      row_id[size_t(r)] = pick(0, 1) ? int64_t(pick(0, 100000)) : (int64_t(pick(1, 9)) << 32) + pick(0, 1000);
      for (int t = 0; t < k; ++t) {
        const int64_t at = r * k + t;
        const int64_t n = t < private_terms ? na : nb;
        index[size_t(at)] = pick(0, int(n) - 1);
        lam[size_t(at)] = std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
        const bool big = pick(0, 9) == 0;  // now and then a window entirely outside
        offset[size_t(2 * at)] = big ? pick(-100, 100) : (cifar ? pick(-4, 4) : pick(-4, int(SH - H) + 4));
        offset[size_t(2 * at + 1)] = big ? pick(-100, 100) : (cifar ? pick(-4, 4) : pick(-4, int(SW - W) + 4));
        flip[size_t(at)] = uint8_t(pick(0, 1) ? pick(1, 255) : 0);
      }
    }
    index_gpu = index;
    if (bad_index && rows > 0) {
      // An index out of range reads as the all-zero image (the last one) in the CUDA kernel.
      const int64_t at = pick(0, int(rows * k) - 1);
      const int64_t n = (at % k) < private_terms ? na : nb;
      index[size_t(at)] = n;  // the zero image, for the CPU
      index_gpu[size_t(at)] = pick(0, 1) ? -1 - pick(0, 5) : n + 1 + pick(0, 5);
    }
    EncodeArgs a;
    a.sources[0] = A.src;
    a.sources[1] = B.src;
    a.private_terms = private_terms;
    a.k = k;
    a.rows = rows;
    a.row_id = row_id.data();
    a.index = index.data();
    a.lam = lam.data();
    a.offset = offset.data();
    a.flip = flip.data();
    for (int i = 0; i < 32; ++i) a.mask_key[i] = uint8_t(pick(0, 255));
    a.epoch = uint32_t(pick(0, 1) ? pick(0, 10) : 0xfffffff0u + pick(0, 15));
    a.sign = cifar ? SignMode::kFlip : SignMode(pick(0, 2));
    a.out_type = cifar ? OutType::kFloat32 : OutType(pick(0, 2));
    a.out_channels_last = cifar ? false : pick(0, 1);
    a.out_height = H;
    a.out_width = W;
    const int64_t elems = rows * C * H * W;
    const int64_t esz = a.out_type == OutType::kFloat32 ? 4 : 2;
    std::vector<uint8_t> out_cpu(size_t(elems * esz + 16), 0xCD), out_gpu(size_t(elems * esz + 16), 0xCD);
    a.out = out_cpu.data();
    encode_cpu(a, 1);
    EncodeArgs g = a;
    g.index = index_gpu.data();
    g.out = out_gpu.data();
    // Now and then the tables of a whole epoch, looked up by row id (as the Python layer does).
    std::vector<int64_t> epoch_index, epoch_row_id;
    std::vector<float> epoch_lam;
    std::vector<int32_t> epoch_offset;
    std::vector<uint8_t> epoch_flip;
    if (rows > 0 && pick(0, 2) == 0) {
      const int64_t epoch_rows = rows + pick(0, 20);
      epoch_index.assign(size_t(epoch_rows * k), 0);
      epoch_lam.assign(size_t(epoch_rows * k), 1e30f);  // rows of the epoch outside the batch: garbage
      epoch_offset.assign(size_t(epoch_rows * k * 2), 77);
      epoch_flip.assign(size_t(epoch_rows * k), 1);
      std::vector<int64_t> perm(static_cast<size_t>(epoch_rows));
      for (int64_t i = 0; i < epoch_rows; ++i) perm[size_t(i)] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      epoch_row_id.assign(perm.begin(), perm.begin() + rows);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t e = epoch_row_id[size_t(r)];
        for (int t = 0; t < k; ++t) {
          epoch_index[size_t(e * k + t)] = index_gpu[size_t(r * k + t)];
          epoch_lam[size_t(e * k + t)] = lam[size_t(r * k + t)];
          epoch_flip[size_t(e * k + t)] = flip[size_t(r * k + t)];
          for (int d = 0; d < 2; ++d) epoch_offset[size_t((e * k + t) * 2 + d)] = offset[size_t((r * k + t) * 2 + d)];
        }
      }
      // The mask follows the row id: give the CPU the same ids.
      row_id = epoch_row_id;
      a.row_id = row_id.data();
      encode_cpu(a, 1);
      g.row_id = row_id.data();
      g.tables_by_row_id = true;
      g.index = epoch_index.data();
      g.lam = epoch_lam.data();
      g.offset = epoch_offset.data();
      g.flip = epoch_flip.data();
    }
    const bool force_wide = pick(0, 3) == 0;
    // Soft labels mixed in the same pass, from random class ids or (every third case) from
    // random soft label rows.
    LabelArgs labels;
    std::vector<int64_t> class_ids(static_cast<size_t>(na + 1));
    labels.classes = pick(1, 40);  // sometimes more than one class per lane
    for (auto& id : class_ids) id = pick(0, int(labels.classes) - 1);
    std::vector<float> soft_rows(size_t((na + 1) * labels.classes));
    for (auto& y : soft_rows) y = pick(0, 3) ? std::uniform_real_distribution<float>(0.0f, 1.0f)(rng) : 0.0f;
    std::vector<float> soft(size_t(rows * labels.classes), -1.0f);
    if (iter % 3 == 2)
      labels.soft = soft_rows.data();
    else
      labels.class_ids = class_ids.data();
    labels.label_count = na + 1;
    labels.renormalize = pick(0, 1);
    labels.out = soft.data();
    emulate(g, force_wide, &labels);
    ++cases;
    if (std::memcmp(out_cpu.data() + elems * esz, out_gpu.data() + elems * esz, 16) != 0) {
      std::printf("case %d: wrote past the end\n", iter);
      ++failures;
    }
    const float rel = a.out_type == OutType::kFloat32 ? 2e-6f : a.out_type == OutType::kFloat16 ? 1.5e-3f : 8.5e-3f;
    int bad = 0;
    double max_err = 0;
    for (int64_t i = 0; i < elems; ++i) {
      const float x = out_value(out_cpu.data(), a.out_type, i), y = out_value(out_gpu.data(), a.out_type, i);
      const float err = std::fabs(x - y);
      max_err = std::max(max_err, double(err));
      if (!(err <= 1e-5f + rel * std::fabs(x))) {
        if (bad < 5)
          std::printf("case %d (C=%ld H=%ld W=%ld src %ldx%ld k=%d pt=%d u8=%d/%d layout=%d/%d sign=%d out=%d cl=%d wide=%d) elem %ld: cpu %g gpu %g\n",
                      iter, long(C), long(H), long(W), long(SH), long(SW), k, private_terms, u8a, u8b, la, lb, int(a.sign),
                      int(a.out_type), int(a.out_channels_last), int(force_wide), long(i), x, y);
        ++bad;
      }
    }
    if (bad) ++failures;
    if (!bad_index && !labels_match(a, labels, soft)) {
      std::printf("case %d: soft labels differ\n", iter);
      ++failures;
    }
    if (iter < 3) std::printf("cifar case %d: %ld elements, max abs err %.3g\n", iter, long(elems), max_err);
  }
  if (g_divergent) {
    std::printf("%d warps: the lanes did not all reach the same warp syncs\n", g_divergent);
    ++failures;
  }
  std::printf("%d cases (%d on the word-wide path), %d failed\n", cases, g_word_cases, failures);
  if (g_word_cases < cases / 10) {
    std::printf("too few cases took the word-wide path\n");
    return 1;
  }
  std::printf("cuda_device_count() = %d; cuda_status() = %s\n", cuda_device_count(), cuda_status().c_str());
  return failures ? 1 : 0;
}
