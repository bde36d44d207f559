// What the CPU row kernels share (encode_cpu.cpp, encode_cpu_avx512.cpp): where a row's term
// images are and how the next row's images are fetched while this row computes.
#pragma once
#include <algorithm>
#include <cstdint>

#include "encode.h"
#include "platform.h"

namespace instahide {
namespace cpu {

// One prefetch step of the plan per this many output elements of one term: a 48-element block
// (16 pixels of 3 channels, whole vectors of 4, 8 or 16 lanes).
constexpr int64_t kPrefetchBlock = 48;
// Keystream rows are padded so that 64-bit loads at a row's last byte stay in bounds.
constexpr int64_t kKeystreamPad = 8;

// Fetches the images of the next row a few cache lines at a time, spread over this row's
// work: rows pick images at random, so the hardware prefetcher cannot see them coming, and a
// burst of prefetches would stall on the CPU's few outstanding-miss slots instead of
// overlapping with compute.
struct Prefetcher {
  const char* image[kMaxTerms];
  int64_t bytes[kMaxTerms];
  int count = 0, term = 0;
  int64_t offset = 0;
  int64_t per_step = 1;

  // One step per term and block of kPrefetchBlock elements: a pass mixing N terms at once steps
  // N times per block.
  INSTAHIDE_ALWAYS_INLINE void step(int terms = 1) {
    for (int64_t i = 0; i < per_step * terms && term < count; ++i) {
      INSTAHIDE_PREFETCH_L2(image[term] + offset);  // to L2: the row after this one reads it
      offset += 64;
      if (offset >= bytes[term]) offset = 0, ++term;
    }
  }
  INSTAHIDE_ALWAYS_INLINE void finish() {
    while (term < count) step();
  }
};

INSTAHIDE_ALWAYS_INLINE int64_t pixel_bytes(const ImageSource& s) { return s.pixel == PixelType::kUint8 ? 1 : 4; }

// Where row r's k entries start in the term tables.
INSTAHIDE_ALWAYS_INLINE int64_t table_entry(const EncodeArgs& args, int64_t r) {
  return (args.tables_by_row_id ? args.row_id[r] : r) * args.k;
}

// The first byte of term t's image in row r.
INSTAHIDE_ALWAYS_INLINE const char* term_image(const EncodeArgs& args, int64_t r, int64_t t) {
  const ImageSource& s = args.sources[t < args.private_terms ? 0 : 1];
  const int64_t i = args.index[table_entry(args, r) + t];
  const int64_t first = s.image_offset ? s.image_offset[i] : i * s.stride_n;
  return static_cast<const char*>(s.data) + first * pixel_bytes(s);
}

// Where term t of row r reads: its image (first byte), the image's size and distance between
// pixel rows (elements), the window's offset and flip.
struct TermWindow {
  const char* image;
  int64_t height, width, stride_h;
  int64_t dy, dx;
  bool flip;
};

INSTAHIDE_ALWAYS_INLINE TermWindow term_window(const EncodeArgs& args, int64_t r, int64_t t) {
  const ImageSource& s = args.sources[t < args.private_terms ? 0 : 1];
  const int64_t at = table_entry(args, r) + t, i = args.index[at];
  TermWindow w;
  w.image = term_image(args, r, t);
  w.height = s.image_size ? s.image_size[2 * i] : s.height;
  w.width = s.image_size ? s.image_size[2 * i + 1] : s.width;
  w.stride_h = s.image_size ? w.width * s.channels : s.stride_h;  // packed images: channels-last rows
  w.dy = args.offset[2 * at];
  w.dx = args.offset[2 * at + 1];
  w.flip = args.flip[at] != 0;
  return w;
}

// The images row r reads, to fetch while the current row computes; none where r >= end (rows
// from `end` on may not be validated yet).
INSTAHIDE_ALWAYS_INLINE void plan_prefetch(const EncodeArgs& args, int64_t r, int64_t end, Prefetcher& pf) {
  pf = Prefetcher();
  if (r >= end) return;
  int64_t lines = 0, elements = 0;
  const int64_t entry = table_entry(args, r);
  for (int64_t t = 0; t < args.k; ++t) {
    const ImageSource& s = args.sources[t < args.private_terms ? 0 : 1];
    const int64_t i = args.index[entry + t];
    const int64_t pixels = s.image_size ? int64_t(s.image_size[2 * i]) * s.image_size[2 * i + 1] : s.height * s.width;
    const int64_t bytes = s.channels * pixels * pixel_bytes(s);
    elements += s.channels * args.out_height * args.out_width;
    if (!s.image_offset && s.stride_n * pixel_bytes(s) != bytes) continue;  // not compact: leave it to the hardware
    pf.image[pf.count] = term_image(args, r, t);
    pf.bytes[pf.count++] = bytes;
    lines += (bytes + 63) / 64;
  }
  const int64_t steps = std::max<int64_t>(1, elements / kPrefetchBlock);
  pf.per_step = (lines + steps - 1) / steps;
}

// Fetches row r's entries of the key tables: rows of a batch are random rows of the epoch's
// tables, so each row's entries are cache misses unless fetched a row or two ahead.
INSTAHIDE_ALWAYS_INLINE void prefetch_tables(const EncodeArgs& args, int64_t r, int64_t end) {
  if (r >= end) return;
  const int64_t entry = table_entry(args, r), last = entry + args.k - 1;
  INSTAHIDE_PREFETCH_L1(args.index + entry);
  INSTAHIDE_PREFETCH_L1(args.index + last);
  INSTAHIDE_PREFETCH_L1(args.lam + entry);
  INSTAHIDE_PREFETCH_L1(args.lam + last);
  INSTAHIDE_PREFETCH_L1(args.offset + 2 * entry);
  INSTAHIDE_PREFETCH_L1(args.offset + 2 * last + 1);
  INSTAHIDE_PREFETCH_L1(args.flip + entry);
  INSTAHIDE_PREFETCH_L1(args.flip + last);
}

}  // namespace cpu
}  // namespace instahide
