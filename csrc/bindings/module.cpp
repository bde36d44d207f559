// Thin pybind11 bindings of the Python-free core: buffers in, EncodeArgs out, GIL released
// around every kernel. Inputs are never converted or copied: a wrong dtype or layout is an
// error here, and the Python layer decides what to accept.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "../core/encode.h"
#include "../core/encode_cpu_avx512.h"
#include "../core/platform.h"
#include "../core/thread_pool.h"
#if INSTAHIDE_WITH_CUDA
#include "../core/encode_cuda.h"
#endif

namespace py = pybind11;
using namespace instahide;

namespace {

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

// dtype equality by kind, size and native byte order: arrays rebuilt by pickle (DataLoader
// workers under spawn) carry equal dtypes that are not the same object.
bool same_dtype(const py::dtype& have, const py::dtype& want) {
  const char order = have.byteorder();
  const bool native = order == '=' || order == '|' || order == (INSTAHIDE_LITTLE_ENDIAN ? '<' : '>');
  return native && have.kind() == want.kind() && have.itemsize() == want.itemsize();
}

template <typename T>
const T* table(const py::array& a, const char* name, std::vector<int64_t> shape) {
  if (!same_dtype(a.dtype(), py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) fail(std::string(name) + ": must be C-contiguous");
  if (a.ndim() != py::ssize_t(shape.size())) fail(std::string(name) + ": wrong number of dimensions");
  for (size_t i = 0; i < shape.size(); ++i)
    if (a.shape(py::ssize_t(i)) != shape[i]) fail(std::string(name) + ": wrong shape");
  return static_cast<const T*>(a.data());
}

void read_key(const py::bytes& key, uint8_t out[32]) {
  std::string k = key;
  if (k.size() != 32) fail("the mask key must be 32 bytes, got " + std::to_string(k.size()));
  std::copy(k.begin(), k.end(), out);
}

// scale[C] and shift[C] of v' = v * scale - shift, one value per channel of `s`.
void read_normalization(ImageSource& s, const py::handle& scale_list, const py::handle& shift_list) {
  if (s.channels < 1 || s.channels > kMaxChannels) fail("images must have 1 to 4 channels, got " + std::to_string(s.channels));
  auto scale = scale_list.cast<std::vector<float>>();
  auto shift = shift_list.cast<std::vector<float>>();
  if (int64_t(scale.size()) != s.channels || int64_t(shift.size()) != s.channels)
    fail("scale and shift need one value per channel");
  for (int64_t c = 0; c < s.channels; ++c) s.scale[c] = scale[c], s.shift[c] = shift[c];
}

// (images, channels_last, scale[C], shift[C]) -> ImageSource, strides in elements.
ImageSource read_source(const py::tuple& spec) {
  if (spec.size() != 4) fail("a source is (images, channels_last, scale, shift)");
  py::array images = spec[0].cast<py::array>();
  bool channels_last = spec[1].cast<bool>();
  ImageSource s;
  if (same_dtype(images.dtype(), py::dtype::of<uint8_t>())) s.pixel = PixelType::kUint8;
  else if (same_dtype(images.dtype(), py::dtype::of<float>())) s.pixel = PixelType::kFloat32;
  else throw py::type_error("images must be uint8 or float32, got " + std::string(py::str(images.dtype())));
  if (images.ndim() != 4) fail("images must have 4 dimensions (N, C, H, W) or (N, H, W, C)");
  const py::ssize_t item = images.itemsize();
  std::array<int64_t, 4> shape{}, stride{};
  for (int i = 0; i < 4; ++i) {
    if (images.strides(i) % item) fail("image strides must be multiples of the pixel size");
    shape[i] = images.shape(i);
    stride[i] = images.strides(i) / item;
  }
  const std::array<int, 4> axes = channels_last ? std::array<int, 4>{0, 3, 1, 2} : std::array<int, 4>{0, 1, 2, 3};
  s.data = images.data();
  s.count = shape[0];
  s.channels = shape[axes[1]], s.height = shape[axes[2]], s.width = shape[axes[3]];
  s.stride_n = stride[0], s.stride_c = stride[axes[1]], s.stride_h = stride[axes[2]], s.stride_w = stride[axes[3]];
  read_normalization(s, spec[2], spec[3]);
  return s;
}

// (pixels (total,) uint8/float32, channels, offsets (m,) int64, sizes (m, 2) int32, scale[C],
// shift[C]) -> a packed ImageSource of m channels-last images of their own sizes.
ImageSource read_packed_source(const py::tuple& spec) {
  py::array pixels = spec[0].cast<py::array>();
  ImageSource s;
  if (same_dtype(pixels.dtype(), py::dtype::of<uint8_t>())) s.pixel = PixelType::kUint8;
  else if (same_dtype(pixels.dtype(), py::dtype::of<float>())) s.pixel = PixelType::kFloat32;
  else throw py::type_error("packed images must be uint8 or float32");
  if (pixels.ndim() != 1 || !(pixels.flags() & py::array::c_style)) fail("packed images must be a contiguous 1-d buffer");
  s.channels = spec[1].cast<int64_t>();
  const py::array offsets = spec[2].cast<py::array>(), sizes = spec[3].cast<py::array>();
  if (offsets.ndim() != 1) fail("packed image offsets must be 1-d");
  s.count = offsets.shape(0);
  s.image_offset = table<int64_t>(offsets, "offsets", {s.count});
  s.image_size = table<int32_t>(sizes, "sizes", {s.count, 2});
  s.packed_elements = pixels.shape(0);
  s.data = pixels.data();
  s.stride_c = 1, s.stride_w = s.channels;
  s.height = s.width = 1;  // unused: every image has its own size
  read_normalization(s, spec[4], spec[5]);
  return s;
}

// The key tables: (rows, k) for the rows of `row_id`, or, with `tables_by_row_id`, the whole
// epoch's (n, k), looked up by row id (no gather per batch).
void read_tables(EncodeArgs& a, const py::array& index, const py::array& lam, const py::array& row_id,
                 bool tables_by_row_id) {
  if (index.ndim() != 2) fail("index: must have shape (rows, k)");
  if (row_id.ndim() != 1) fail("row_id: must be one-dimensional");
  a.tables_by_row_id = tables_by_row_id;
  a.table_rows = index.shape(0);
  a.rows = tables_by_row_id ? row_id.shape(0) : a.table_rows;
  a.k = int(index.shape(1));
  a.index = table<int64_t>(index, "index", {a.table_rows, a.k});
  a.lam = table<float>(lam, "lam", {a.table_rows, a.k});
  a.row_id = table<int64_t>(row_id, "row_id", {a.rows});
}

// LabelArgs of host labels: class ids (n,) int64, or soft label rows (n, classes) float32,
// C-contiguous; the output (rows, classes) float32 is allocated into `soft`.
LabelArgs read_labels(const py::array& labels, int64_t classes, bool renormalize, int64_t rows, py::object& soft) {
  LabelArgs l;
  if (same_dtype(labels.dtype(), py::dtype::of<float>())) {
    if (labels.ndim() != 2) fail("soft labels: must have shape (n, classes)");
    l.label_count = labels.shape(0);
    if (labels.shape(1) != classes) fail("soft labels: must have `classes` columns");
    l.soft = table<float>(labels, "soft labels", {l.label_count, classes});
  } else {
    if (labels.ndim() != 1) fail("labels: must be one-dimensional class ids or (n, classes) float32 soft labels");
    l.label_count = labels.shape(0);
    l.class_ids = table<int64_t>(labels, "labels", {l.label_count});
  }
  if (classes < 1) fail("classes must be >= 1");
  l.classes = classes;
  l.renormalize = renormalize;
  py::array_t<float> out({rows, classes});
  l.out = out.mutable_data();
  soft = out;
  return l;
}

// With `labels` (class ids (n,) int64 or soft labels (n, classes) float32 of the private
// images) also returns the rows' soft labels (rows, classes) float32, mixed in the same
// parallel call; else None.
py::object encode(const py::list& sources, int private_terms, const py::array& index, const py::array& lam,
                  const py::array& offset, const py::array& flip, const py::array& row_id, const py::bytes& mask_key,
                  uint32_t epoch, int sign, py::array out, int out_type, bool out_channels_last, int num_threads,
                  bool tables_by_row_id, bool patches_inside, const py::object& labels, int64_t classes,
                  bool renormalize, const std::string& cpu_kernel) {
  if (cpu_kernel != "auto" && cpu_kernel != "portable") fail("cpu_kernel must be 'auto' or 'portable'");
  EncodeArgs a;
  a.patches_inside = patches_inside;
  if (sources.size() < 1 || sources.size() > 2) fail("one or two image sources");
  for (size_t i = 0; i < sources.size(); ++i) {
    const py::tuple spec = sources[i].cast<py::tuple>();
    a.sources[i] = spec.size() == 6 ? read_packed_source(spec) : read_source(spec);
  }
  read_tables(a, index, lam, row_id, tables_by_row_id);
  a.private_terms = private_terms;
  if (private_terms < a.k && sources.size() < 2) fail("public terms need a public image source");
  a.offset = table<int32_t>(offset, "offset", {a.table_rows, a.k, 2});
  a.flip = reinterpret_cast<const uint8_t*>(table<bool>(flip, "flip", {a.table_rows, a.k}));
  read_key(mask_key, a.mask_key);
  a.epoch = epoch;
  if (sign < 0 || sign > 2) fail("sign must be 0 (flip), 1 (abs) or 2 (none)");
  a.sign = SignMode(sign);

  if (out_type < 0 || out_type > 2) fail("out_type must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  a.out_type = OutType(out_type);
  const py::dtype want = out_type == 0 ? py::dtype::of<float>()
                         : out_type == 1 ? py::dtype("float16") : py::dtype::of<uint16_t>();
  if (!same_dtype(out.dtype(), want)) throw py::type_error("out: expected dtype " + std::string(py::str(want)));
  if (!(out.flags() & py::array::c_style) || !out.writeable()) fail("out: must be C-contiguous and writeable");
  if (out.ndim() != 4 || out.shape(0) != a.rows) fail("out: must have shape (rows, ...) with 4 dimensions");
  const int64_t C = a.sources[0].channels;
  a.out_channels_last = out_channels_last;
  a.out_height = out.shape(out_channels_last ? 1 : 2);
  a.out_width = out.shape(out_channels_last ? 2 : 3);
  if (out.shape(out_channels_last ? 3 : 1) != C) fail("out: channel count differs from the images'");
  a.out = out.mutable_data();

  LabelArgs label_args;
  py::object soft = py::none();
  if (!labels.is_none()) label_args = read_labels(labels.cast<py::array>(), classes, renormalize, a.rows, soft);
  {
    py::gil_scoped_release release;
    encode_cpu(a, num_threads, labels.is_none() ? nullptr : &label_args,
               cpu_kernel == "portable" ? CpuKernel::kPortable : CpuKernel::kAuto);
  }
  return soft;
}

// Soft labels (rows, classes) float32 of the rows `row_id` from the private images' labels
// (class ids (n,) int64 or soft labels (n, classes) float32), the tables looked up by row id.
py::object mix_labels(const py::array& index, const py::array& lam, const py::array& row_id, int private_terms,
                      const py::array& labels, int64_t classes, bool renormalize) {
  EncodeArgs a;
  read_tables(a, index, lam, row_id, true);
  a.private_terms = private_terms;
  py::object soft;
  const LabelArgs l = read_labels(labels, classes, renormalize, a.rows, soft);
  {
    py::gil_scoped_release release;
    mix_labels_cpu(a, l);
  }
  return soft;
}

// The benchmarks' access-pattern yardstick (see gather_sum_cpu): images (N, ...) uint8,
// index (rows, k) int64 -> (rows, bytes per image) float32.
py::array_t<float> gather_sum(const py::array& images, const py::array& index, int num_threads) {
  if (!same_dtype(images.dtype(), py::dtype::of<uint8_t>()) || !(images.flags() & py::array::c_style) ||
      images.ndim() < 1)
    fail("gather_sum: images must be a C-contiguous uint8 array (N, ...)");
  if (index.ndim() != 2) fail("gather_sum: index must have shape (rows, k)");
  const int64_t count = images.shape(0), rows = index.shape(0);
  const int64_t bytes = count ? images.nbytes() / count : 1;
  const int64_t* idx = table<int64_t>(index, "index", {rows, index.shape(1)});
  const int k = int(index.shape(1));
  py::array_t<float> out({rows, bytes});
  float* o = out.mutable_data();
  const auto* data = static_cast<const uint8_t*>(images.data());
  py::gil_scoped_release release;
  gather_sum_cpu(data, count, bytes, idx, k, rows, o, num_threads);
  return out;
}

py::array_t<int8_t> mask(const py::bytes& key, uint32_t epoch, const py::array& row_id, int64_t elements,
                         int num_threads) {
  uint8_t k[32];
  read_key(key, k);
  if (row_id.ndim() != 1) fail("row ids must be one-dimensional");
  const int64_t rows = row_id.shape(0);
  const int64_t* ids = table<int64_t>(row_id, "row_id", {rows});
  if (elements < 0) fail("elements must be >= 0");
  py::array_t<int8_t> out({rows, elements});
  int8_t* o = out.mutable_data();
  py::gil_scoped_release release;
  mask_cpu(k, epoch, ids, rows, elements, o, num_threads);
  return out;
}

py::array_t<uint8_t> chacha20(const py::bytes& key, const py::bytes& nonce, uint32_t counter, int64_t blocks) {
  uint8_t k[32];
  read_key(key, k);
  std::string n = nonce;
  if (n.size() != 12) fail("the nonce must be 12 bytes");
  if (blocks < 0) fail("blocks must be >= 0");
  py::array_t<uint8_t> out(blocks * 64);
  uint8_t* o = out.mutable_data();
  py::gil_scoped_release release;
  chacha20_keystream(k, reinterpret_cast<const uint8_t*>(n.data()), counter, blocks, o);
  return out;
}

// A CUDA source: (pointer, pixel type 0 uint8 / 1 float32, (N, C, H, W), element strides in
// that order, scale[C], shift[C]). The Python layer reads these off the tensor.
ImageSource read_device_source(const py::tuple& spec) {
  if (spec.size() == 9) {
    // packed: (pointer, pixel, channels, count, offsets pointer, sizes pointer, buffer length,
    // scale, shift); the Python layer checked the offsets and sizes before uploading them.
    ImageSource s;
    s.data = reinterpret_cast<const void*>(spec[0].cast<uintptr_t>());
    const int pixel = spec[1].cast<int>();
    if (pixel != 0 && pixel != 1) fail("pixel type must be 0 (uint8) or 1 (float32)");
    s.pixel = PixelType(pixel);
    s.channels = spec[2].cast<int64_t>();
    s.count = spec[3].cast<int64_t>();
    s.image_offset = reinterpret_cast<const int64_t*>(spec[4].cast<uintptr_t>());
    s.image_size = reinterpret_cast<const int32_t*>(spec[5].cast<uintptr_t>());
    s.packed_elements = spec[6].cast<int64_t>();
    s.height = s.width = 1;  // unused: every image has its own size
    s.stride_c = 1, s.stride_w = s.channels;
    read_normalization(s, spec[7], spec[8]);
    return s;
  }
  if (spec.size() != 6) fail("a device source is (pointer, pixel, shape, strides, scale, shift)");
  ImageSource s;
  s.data = reinterpret_cast<const void*>(spec[0].cast<uintptr_t>());
  const int pixel = spec[1].cast<int>();
  if (pixel != 0 && pixel != 1) fail("pixel type must be 0 (uint8) or 1 (float32)");
  s.pixel = PixelType(pixel);
  auto shape = spec[2].cast<std::array<int64_t, 4>>();
  auto strides = spec[3].cast<std::array<int64_t, 4>>();
  s.count = shape[0], s.channels = shape[1], s.height = shape[2], s.width = shape[3];
  s.stride_n = strides[0], s.stride_c = strides[1], s.stride_h = strides[2], s.stride_w = strides[3];
  read_normalization(s, spec[4], spec[5]);
  return s;
}

// The CUDA kernel on device pointers (keys tables of `rows` rows, output C-contiguous),
// queued on `stream` of `device`; returns before the kernel ends. With `soft` (not 0), it
// also mixes the rows' soft labels into it from `labels`: (pointer to label_count int64 class
// ids, or to label_count rows of `classes` float32 soft labels, label_count, classes,
// renormalize, whether the pointer is to soft labels).
void encode_on_cuda(const py::list& sources, int private_terms, int64_t rows, int k, uintptr_t index, uintptr_t lam,
                 uintptr_t offset, uintptr_t flip, uintptr_t row_id, const py::bytes& mask_key, uint32_t epoch, int sign,
                 uintptr_t out, int out_type, bool out_channels_last, int64_t out_height, int64_t out_width, int device,
                 uintptr_t stream, bool tables_by_row_id, const py::object& labels, uintptr_t soft) {
#if INSTAHIDE_WITH_CUDA
  EncodeArgs a;
  if (sources.size() < 1 || sources.size() > 2) fail("one or two image sources");
  for (size_t i = 0; i < sources.size(); ++i) a.sources[i] = read_device_source(sources[i].cast<py::tuple>());
  a.private_terms = private_terms, a.rows = rows, a.k = k;
  a.index = reinterpret_cast<const int64_t*>(index);
  a.lam = reinterpret_cast<const float*>(lam);
  a.offset = reinterpret_cast<const int32_t*>(offset);
  a.flip = reinterpret_cast<const uint8_t*>(flip);
  a.row_id = reinterpret_cast<const int64_t*>(row_id);
  a.tables_by_row_id = tables_by_row_id;
  read_key(mask_key, a.mask_key);
  a.epoch = epoch;
  if (sign < 0 || sign > 2) fail("sign must be 0 (flip), 1 (abs) or 2 (none)");
  a.sign = SignMode(sign);
  if (out_type < 0 || out_type > 2) fail("out_type must be 0, 1 or 2");
  a.out = reinterpret_cast<void*>(out);
  a.out_type = OutType(out_type);
  a.out_channels_last = out_channels_last;
  a.out_height = out_height, a.out_width = out_width;
  LabelArgs label_args;
  if (soft) {
    const auto spec = labels.cast<std::tuple<uintptr_t, int64_t, int64_t, bool, bool>>();
    if (std::get<4>(spec))
      label_args.soft = reinterpret_cast<const float*>(std::get<0>(spec));
    else
      label_args.class_ids = reinterpret_cast<const int64_t*>(std::get<0>(spec));
    label_args.label_count = std::get<1>(spec);
    label_args.classes = std::get<2>(spec);
    label_args.renormalize = std::get<3>(spec);
    label_args.out = reinterpret_cast<float*>(soft);
  }
  py::gil_scoped_release release;
  CudaDeviceGuard guard(device);
  encode_cuda(a, reinterpret_cast<void*>(stream), soft ? &label_args : nullptr);
#else
  (void)sources, (void)private_terms, (void)rows, (void)k, (void)index, (void)lam, (void)offset, (void)flip;
  (void)row_id, (void)mask_key, (void)epoch, (void)sign, (void)out, (void)out_type, (void)out_channels_last;
  (void)out_height, (void)out_width, (void)device, (void)stream, (void)tables_by_row_id, (void)labels, (void)soft;
  throw std::runtime_error("instahide was built without CUDA (no nvcc at build time, or INSTAHIDE_CUDA=off)");
#endif
}

py::dict build_info() {
  py::dict info;
#if INSTAHIDE_WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_architectures"] = std::string(INSTAHIDE_CUDA_ARCHS);
  info["cuda_toolkit"] = std::string(INSTAHIDE_CUDA_VERSION);
  info["cuda_devices"] = cuda_device_count();
  info["cuda_status"] = cuda_status();
#else
  info["cuda_compiled"] = false;
  info["cuda_architectures"] = "";
  info["cuda_toolkit"] = "";
  info["cuda_devices"] = 0;
  info["cuda_status"] = "not compiled with CUDA";
#endif
  info["cpu_cores"] = available_cores();
  // The CPU row kernel encode calls use where it applies (docs/building.md).
  info["cpu_kernel"] = cpu::avx512_kernel_available() ? "avx512" : "portable";
  return info;
}

int pointer_device(uintptr_t pointer) {
#if INSTAHIDE_WITH_CUDA
  return cuda_pointer_device(reinterpret_cast<const void*>(pointer));
#else
  (void)pointer;
  return -1;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "instahide's compiled core (private: use the instahide package)";
  m.def("encode", &encode, py::arg("sources"), py::arg("private_terms"), py::arg("index"), py::arg("lam"),
        py::arg("offset"), py::arg("flip"), py::arg("row_id"), py::arg("mask_key"), py::arg("epoch"),
        py::arg("sign"), py::arg("out"), py::arg("out_type"), py::arg("out_channels_last"), py::arg("num_threads"),
        py::arg("tables_by_row_id") = false, py::arg("patches_inside") = false, py::arg("labels") = py::none(),
        py::arg("classes") = 0, py::arg("renormalize") = false, py::arg("cpu_kernel") = "auto");
  m.def("mix_labels", &mix_labels, py::arg("index"), py::arg("lam"), py::arg("row_id"), py::arg("private_terms"),
        py::arg("labels"), py::arg("classes"), py::arg("renormalize") = false);
  m.def("gather_sum", &gather_sum, py::arg("images"), py::arg("index"), py::arg("num_threads") = 0);
  m.def("mask", &mask, py::arg("key"), py::arg("epoch"), py::arg("row_id"), py::arg("elements"),
        py::arg("num_threads") = 0);
  m.def("chacha20", &chacha20, py::arg("key"), py::arg("nonce"), py::arg("counter"), py::arg("blocks"));
  m.def("available_cores", &available_cores);
  m.def("get_num_threads", &default_threads);
  m.def("set_num_threads", &set_default_threads, py::arg("n"));
  m.def("encode_cuda", &encode_on_cuda, py::arg("sources"), py::arg("private_terms"), py::arg("rows"), py::arg("k"),
        py::arg("index"), py::arg("lam"), py::arg("offset"), py::arg("flip"), py::arg("row_id"), py::arg("mask_key"),
        py::arg("epoch"), py::arg("sign"), py::arg("out"), py::arg("out_type"), py::arg("out_channels_last"),
        py::arg("out_height"), py::arg("out_width"), py::arg("device"), py::arg("stream"),
        py::arg("tables_by_row_id") = false, py::arg("labels") = py::none(), py::arg("soft") = 0);
  m.def("build_info", &build_info);
  m.def("pointer_device", &pointer_device, py::arg("pointer"));
}
