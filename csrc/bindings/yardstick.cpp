// instahide._yardstick: the benchmarks' access-pattern yardstick (gather_sum_cpu), a module of
// its own so that the shipped extension carries no benchmark code. Built with the CMake
// option INSTAHIDE_BENCH=ON (core compiled with INSTAHIDE_BENCH=1); never part of a wheel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../core/encode.h"

namespace py = pybind11;

namespace {

// images (N, ...) uint8, C-contiguous; index (rows, k) int64 -> (rows, bytes per image) float32.
py::array_t<float> gather_sum(const py::array_t<uint8_t, 0>& images, const py::array_t<int64_t, 0>& index,
                              int num_threads) {
  if (!(images.flags() & py::array::c_style) || images.ndim() < 1)
    throw py::value_error("gather_sum: images must be a C-contiguous uint8 array (N, ...)");
  if (index.ndim() != 2 || !(index.flags() & py::array::c_style))
    throw py::value_error("gather_sum: index must be a C-contiguous int64 array (rows, k)");
  const int64_t count = images.shape(0), rows = index.shape(0);
  const int64_t bytes = count ? images.nbytes() / count : 1;
  const int k = int(index.shape(1));
  py::array_t<float> out({rows, bytes});
  float* o = out.mutable_data();
  const uint8_t* data = images.data();
  const int64_t* idx = index.data();
  py::gil_scoped_release release;
  instahide::gather_sum_cpu(data, count, bytes, idx, k, rows, o, num_threads);
  return out;
}

}  // namespace

PYBIND11_MODULE(_yardstick, m) {
  m.doc() = "the benchmarks' access-pattern yardstick (not shipped; CMake option INSTAHIDE_BENCH)";
  m.def("gather_sum", &gather_sum, py::arg("images"), py::arg("index"), py::arg("num_threads") = 0,
        "out[r] = the sum of the k images index[r], as float32, with the encoder's memory traffic");
}
