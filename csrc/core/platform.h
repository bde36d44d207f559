// Compiler portability of the CPU core: GCC and Clang (Linux, macOS) and MSVC (Windows).
#pragma once

#if defined(_MSC_VER) && !defined(__clang__)
#define INSTAHIDE_ALWAYS_INLINE __forceinline
#define INSTAHIDE_PREFETCH_L2(p) ((void)(p))  // a hint only
#define INSTAHIDE_PREFETCH_L1(p) ((void)(p))
#define INSTAHIDE_LITTLE_ENDIAN 1             // every MSVC target is little-endian
#else
#define INSTAHIDE_ALWAYS_INLINE __attribute__((always_inline)) inline
#define INSTAHIDE_PREFETCH_L2(p) __builtin_prefetch((p), 0, 1)
#define INSTAHIDE_PREFETCH_L1(p) __builtin_prefetch((p), 0, 3)
#define INSTAHIDE_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
#endif

#include <cstdint>

namespace instahide {

// a * b and a + b in int64_t: false and the result in *out, or true where it overflows (the
// GCC/Clang builtins; the equivalent checks on MSVC, which has no such builtins).
inline bool mul_overflow(int64_t a, int64_t b, int64_t* out) {
#if defined(_MSC_VER) && !defined(__clang__)
  if (a != 0 && b != 0) {
    const bool overflow = a > 0 ? (b > 0 ? a > INT64_MAX / b : b < INT64_MIN / a)
                                : (b > 0 ? a < INT64_MIN / b : b < INT64_MAX / a);
    if (overflow) return true;
  }
  *out = a * b;
  return false;
#else
  return __builtin_mul_overflow(a, b, out);
#endif
}

inline bool add_overflow(int64_t a, int64_t b, int64_t* out) {
#if defined(_MSC_VER) && !defined(__clang__)
  if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) return true;
  *out = a + b;
  return false;
#else
  return __builtin_add_overflow(a, b, out);
#endif
}

// |stride| * extent added to acc, or INT64_MAX where that overflows 64 bits: the span of
// element offsets a set of images addresses, for the bounds checks of both kernels.
inline int64_t add_span(int64_t acc, int64_t stride, int64_t extent) {
  const uint64_t a = stride < 0 ? uint64_t(0) - uint64_t(stride) : uint64_t(stride);
  int64_t product, sum;
  if (a > uint64_t(INT64_MAX) || mul_overflow(int64_t(a), extent, &product) || add_overflow(acc, product, &sum))
    return INT64_MAX;
  return sum;
}

}  // namespace instahide
