// The argument struct of one encode call, shared by the CPU and CUDA kernels.
// Python-free: the bindings fill it from buffers; the kernels only read it.
// The normative semantics are in docs/algorithm.md.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace instahide {

enum class PixelType : int32_t { kUint8 = 0, kFloat32 = 1 };
enum class OutType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class SignMode : int32_t { kFlip = 0, kAbs = 1, kNone = 2 };
// The CPU row kernel: kAuto takes the AVX-512 kernel where it applies (build, CPU and
// arguments allow it), kPortable always the portable one (tests and A/B runs compare both).
enum class CpuKernel : int32_t { kAuto = 0, kPortable = 1 };

constexpr int kMaxTerms = 16;
constexpr int kMaxChannels = 4;

// A set of equally sized images addressed by element strides (any layout, any order).
struct ImageSource {
  const void* data = nullptr;
  PixelType pixel = PixelType::kUint8;
  int64_t count = 0;
  int64_t channels = 0, height = 0, width = 0;
  int64_t stride_n = 0, stride_c = 0, stride_h = 0, stride_w = 0;  // in elements
  // A packed set of images of different sizes (a public pool): image i starts at element
  // image_offset[i] and has image_size[2i] x image_size[2i+1] (H, W) pixels in channels-last
  // rows (stride_h = W * channels, stride_w = channels, stride_c = 1); stride_n, height and
  // width are unused. Both null for equally sized images addressed by the strides.
  const int64_t* image_offset = nullptr;
  const int32_t* image_size = nullptr;
  int64_t packed_elements = 0;  // length of the packed buffer, for bounds checks
  // Normalization v' = v * scale[c] - shift[c], i.e. scale = unit/std, shift = mean/std.
  float scale[kMaxChannels] = {};
  float shift[kMaxChannels] = {};
};

// Per-row term tables: row r, term t lives at [r * k + t] (offset at [(r * k + t) * 2]).
// Terms t < private_terms read `sources[0]`, the others `sources[1]`.
struct EncodeArgs {
  ImageSource sources[2];
  int private_terms = 0;
  int k = 0;
  int64_t rows = 0;
  const int64_t* row_id = nullptr;   // (rows): the epoch row id, mask nonce
  // With `tables_by_row_id`, the tables below hold every row of the epoch (`table_rows` of
  // them) and row r's entries are those of row_id[r], so that a batch is encoded without
  // gathering its keys first; without it, they hold the `rows` rows in order.
  bool tables_by_row_id = false;
  int64_t table_rows = 0;
  // Public patches must lie inside their images (docs/algorithm.md): validate rejects a row
  // whose public window leaves its image. Without it such windows read 0 outside the image.
  bool patches_inside = false;
  const int64_t* index = nullptr;    // (rows, k): image in its term's source
  const float* lam = nullptr;        // (rows, k): mixing coefficients
  const int32_t* offset = nullptr;   // (rows, k, 2): (dy, dx) of the window
  const uint8_t* flip = nullptr;     // (rows, k): horizontal flip of the window
  uint8_t mask_key[32] = {};
  uint32_t epoch = 0;
  SignMode sign = SignMode::kFlip;
  // Output (rows, C, H, W) or (rows, H, W, C), C-contiguous; H, W = the window size.
  void* out = nullptr;
  OutType out_type = OutType::kFloat32;
  bool out_channels_last = false;
  int64_t out_height = 0, out_width = 0;
};

// The soft labels of the rows of an encode call, mixed from the private images' labels (by
// encode_cpu and encode_cuda alongside the encoding, or by mix_labels_cpu alone): out[r, c] =
// sum over private terms t, in order, of lam[r, t] * y[c], y the one-hot class id or the soft
// label row of the term's image, the products and sums in double, rounded once to float.
struct LabelArgs {
  const int64_t* class_ids = nullptr;  // label_count class ids, one per private image, or
  const float* soft = nullptr;         // label_count soft label rows of `classes` (one of the two)
  int64_t label_count = 0, classes = 0;
  bool renormalize = false;  // divide each row by its private coefficient sum (float, in term order)
  float* out = nullptr;      // (rows, classes), C-contiguous
};

// Bytes of mask keystream one row needs (one bit per element, C*H*W elements).
inline int64_t mask_bytes_per_row(int64_t channels, int64_t height, int64_t width) {
  return (channels * height * width + 7) / 8;
}

// Throws std::invalid_argument unless the call's scalars are consistent: term counts, rows,
// output window and size, sign and output codes, channel counts, each source's pixel type,
// size and strides, non-null tables. Reads nothing behind the pointers: encode_cpu and
// encode_cuda (on device pointers) both start with it.
void validate_shape(const EncodeArgs& args);

// Throws std::invalid_argument unless `args` is safe to run on the CPU: validate_shape, then
// what lies behind the host pointers (packed image sizes; row ids, indices, coefficients).
void validate(const EncodeArgs& args);

// CPU kernel: encodes all rows of `args` on `num_threads` threads (0: the default count);
// with `labels`, also mixes the rows' soft labels (mix_labels_cpu's sums, then divided by the
// row's private coefficient sum where `renormalize`), as tasks of the same parallel loop.
void encode_cpu(const EncodeArgs& args, int num_threads, const LabelArgs* labels = nullptr,
                CpuKernel kernel = CpuKernel::kAuto);

// The soft labels of the rows of `args` into labels.out, as LabelArgs describes. Reads only
// the term counts, rows, row ids and the index and lam tables of `args`, and checks what it
// reads: std::invalid_argument for a row id, index or class id out of range.
void mix_labels_cpu(const EncodeArgs& args, const LabelArgs& labels);

// Mask spec v1 for `rows` rows: out[r, j] = +1 or -1, j = c*H*W + y*W + x.
void mask_cpu(const uint8_t key[32], uint32_t epoch, const int64_t* row_id, int64_t rows,
              int64_t elements_per_row, int8_t* out, int num_threads);

#if INSTAHIDE_BENCH
// A yardstick for the benchmarks, not part of the encoder (compiled only into the benchmark
// module, csrc/bindings/yardstick.cpp): out[r, i] = sum_t images[index[r, t], i] as float32
// over images of `bytes` uint8 each, with the encoder's memory traffic (k whole images read
// per row, prefetched a row ahead as the encoder does, float32 streamed out) and one add per
// element, on `num_threads` threads: what this access pattern alone reaches.
void gather_sum_cpu(const uint8_t* images, int64_t count, int64_t bytes, const int64_t* index, int k, int64_t rows,
                    float* out, int num_threads);
#endif

// Raw ChaCha20 keystream: `blocks` blocks from `counter` (the building block of key sampling).
void chacha20_keystream(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter,
                        int64_t blocks, uint8_t* out);

}  // namespace instahide
