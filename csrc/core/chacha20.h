// ChaCha20 block function (RFC 8439, 20 rounds), shared by the CPU and CUDA kernels.
//
// Mask spec v1 uses it with key = the 32-byte mask key, nonce = LE uint32 epoch followed by
// LE uint64 row id, block counter from 0. Keystream bytes are little-endian state words.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define INSTAHIDE_HD __host__ __device__ __forceinline__
#else
#define INSTAHIDE_HD inline
#endif

namespace instahide {

INSTAHIDE_HD uint32_t rotl32(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

INSTAHIDE_HD uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// The 16 input words of one block, before the rounds.
struct ChaChaInput {
  uint32_t key[8];
  uint32_t nonce[3];
};

INSTAHIDE_HD ChaChaInput chacha_input(const uint8_t key[32], const uint8_t nonce[12]) {
  ChaChaInput in;
  for (int i = 0; i < 8; ++i) in.key[i] = load_le32(key + 4 * i);
  for (int i = 0; i < 3; ++i) in.nonce[i] = load_le32(nonce + 4 * i);
  return in;
}

// Nonce words of mask spec v1: epoch, then the row id's low and high halves.
INSTAHIDE_HD ChaChaInput mask_input(const uint8_t key[32], uint32_t epoch, uint64_t row) {
  ChaChaInput in;
  for (int i = 0; i < 8; ++i) in.key[i] = load_le32(key + 4 * i);
  in.nonce[0] = epoch;
  in.nonce[1] = uint32_t(row);
  in.nonce[2] = uint32_t(row >> 32);
  return in;
}

#define INSTAHIDE_QR(a, b, c, d)          \
  a += b; d ^= a; d = rotl32(d, 16);      \
  c += d; b ^= c; b = rotl32(b, 12);      \
  a += b; d ^= a; d = rotl32(d, 8);       \
  c += d; b ^= c; b = rotl32(b, 7);

// One 64-byte block as 16 little-endian words.
INSTAHIDE_HD void chacha20_block(const ChaChaInput& in, uint32_t counter, uint32_t out[16]) {
  uint32_t s[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                    in.key[0], in.key[1], in.key[2], in.key[3],
                    in.key[4], in.key[5], in.key[6], in.key[7],
                    counter, in.nonce[0], in.nonce[1], in.nonce[2]};
  uint32_t x[16];
  for (int i = 0; i < 16; ++i) x[i] = s[i];
  for (int round = 0; round < 10; ++round) {
    INSTAHIDE_QR(x[0], x[4], x[8], x[12]);
    INSTAHIDE_QR(x[1], x[5], x[9], x[13]);
    INSTAHIDE_QR(x[2], x[6], x[10], x[14]);
    INSTAHIDE_QR(x[3], x[7], x[11], x[15]);
    INSTAHIDE_QR(x[0], x[5], x[10], x[15]);
    INSTAHIDE_QR(x[1], x[6], x[11], x[12]);
    INSTAHIDE_QR(x[2], x[7], x[8], x[13]);
    INSTAHIDE_QR(x[3], x[4], x[9], x[14]);
  }
  for (int i = 0; i < 16; ++i) out[i] = x[i] + s[i];
}

}  // namespace instahide
