// The CPU encoder's AVX-512 row kernel: each 16-pixel run of an output row is mixed in vector
// registers straight from the k source windows, then signed, converted and stored, with no
// accumulator tile in memory. encode_cpu.cpp uses it where it applies and the CPU has the
// instructions; its portable tile kernel does everything else.
#pragma once
#include <cstdint>

#include "encode.h"

namespace instahide {
namespace cpu {

// Whether this build has the kernel and this CPU the instructions it needs.
bool avx512_kernel_available();

// Whether encode_rows_avx512 can encode `args` here: compiled in, the CPU has AVX-512 (F, BW,
// VL, DQ) and BMI2, the sources are uint8 or float32 with unit-stride pixel runs (3 channels
// interleaved, or channel planes), and channels-last output has 1 or 3 channels.
bool avx512_kernel_applies(const EncodeArgs& args);

// Rows [r0, r1) of a validated call, with row r's mask keystream at keystream + (r - r0) * stride.
void encode_rows_avx512(const EncodeArgs& args, int64_t r0, int64_t r1, const uint8_t* keystream, int64_t stride);

}  // namespace cpu
}  // namespace instahide
