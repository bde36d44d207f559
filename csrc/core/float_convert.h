// float32 -> float16 / bfloat16 with round-to-nearest-even, written with integer and float
// operations only so that loops over them vectorize (no F16C or AVX-512 BF16 required).
#pragma once
#include <cstdint>
#include <cstring>

#include "platform.h"

namespace instahide {

INSTAHIDE_ALWAYS_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

INSTAHIDE_ALWAYS_INLINE float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bfloat16: the high half of the float, rounded to nearest even; NaN stays a quiet NaN.
INSTAHIDE_ALWAYS_INLINE uint16_t float_to_bfloat16(uint32_t u) {
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return uint16_t(nan ? ((u >> 16) | 0x40u) : rounded);
}

// IEEE binary16, round to nearest even, subnormals, overflow to inf, NaN to quiet NaN
// (the magic-number method: float addition does the subnormal rounding).
INSTAHIDE_ALWAYS_INLINE uint16_t float_to_float16(uint32_t u) {
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t f32_inf = 255u << 23;
  const uint32_t f16_overflow = (127u + 16u) << 23;
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  // Normal range: rebias the exponent and round the 13 dropped mantissa bits to even.
  uint32_t normal = (a + ((15u - 127u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // Subnormal range: adding 0.5 aligns the 10 mantissa bits at the bottom, rounding to even.
  uint32_t subnormal = float_bits(bits_float(a) + bits_float(denorm_magic)) - denorm_magic;
  uint32_t special = a > f32_inf ? 0x7e00u : 0x7c00u;
  uint32_t h = a >= f16_overflow ? special : (a < (113u << 23) ? subnormal : normal);
  return uint16_t(h | sign);
}

}  // namespace instahide
