// Compiler portability of the CPU core: GCC and Clang (Linux, macOS) and MSVC (Windows).
#pragma once

#if defined(_MSC_VER) && !defined(__clang__)
#define INSTAHIDE_ALWAYS_INLINE __forceinline
#define INSTAHIDE_PREFETCH_L2(p) ((void)(p))  // a hint only
#define INSTAHIDE_LITTLE_ENDIAN 1             // every MSVC target is little-endian
#else
#define INSTAHIDE_ALWAYS_INLINE __attribute__((always_inline)) inline
#define INSTAHIDE_PREFETCH_L2(p) __builtin_prefetch((p), 0, 1)
#define INSTAHIDE_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
#endif
