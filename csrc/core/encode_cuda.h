// CUDA kernel of the fused encoder and device queries.
//
// These functions exist only in builds with CUDA (the INSTAHIDE_CUDA option of CMakeLists.txt,
// encode_cuda.cu compiled and linked into the core); CPU-only builds must not reference them.
#pragma once
#include <string>

#include "encode.h"

namespace instahide {

// Encodes all rows of `args` on the current device (the caller selects it), with the semantics
// of encode_cpu; with `labels`, also mixes the rows' soft labels (as mix_labels_cpu, bit for
// bit, in the same pass). Every pointer in `args` (sources[i].data, row_id, index, lam,
// offset, flip, out) and in `labels` (labels, out) is a device pointer. Runs asynchronously on
// `stream`, a cudaStream_t (null: the default stream). Throws std::invalid_argument for
// arguments that are unsafe to run (checked on the host, without reading device memory) and
// std::runtime_error when the launch fails. An image index outside its set is not checked
// here (it lives in device memory): the kernel reads it as an all-zero image instead of
// reading out of bounds, and it adds to no class; class ids out of range add nothing (the
// caller checks them on the host, where they are).
void encode_cuda(const EncodeArgs& args, void* stream, const LabelArgs* labels = nullptr);

// Makes `device` current while it lives, then restores the caller's current device.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device);
  ~CudaDeviceGuard();
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// The device owning a device (or managed) pointer; -1 for host memory.
int cuda_pointer_device(const void* pointer);

// Usable CUDA devices; 0 (never throws) where there is no driver or no device.
int cuda_device_count();

// One line for humans: why CUDA is unusable, or the devices and driver/runtime versions.
std::string cuda_status();

}  // namespace instahide
