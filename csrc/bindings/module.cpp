// Thin pybind11 bindings of the Python-free core: buffers in, EncodeArgs out, GIL released
// around every kernel. Image sources and labels are typed objects (ImageSource, Labels) built
// by keyword-only factories; the encode calls take keyword arguments only. Inputs are never
// converted or copied: a wrong dtype or layout is an error here, and the Python layer decides
// what to accept.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
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

// Sign and output codes from Python's ints: the one place the bindings convert them (the
// core checks the enums it gets in validate_shape).
SignMode sign_mode(int code) {
  if (code < 0 || code > 2) fail("sign must be 0 (flip), 1 (abs) or 2 (none)");
  return SignMode(code);
}

OutType out_type_of(int code) {
  if (code < 0 || code > 2) fail("out_type must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  return OutType(code);
}

PixelType pixel_type_of(int code) {
  if (code != 0 && code != 1) fail("pixel type must be 0 (uint8) or 1 (float32)");
  return PixelType(code);
}

// _core.ImageSource: a set of images the core reads, with its normalization; a host source
// keeps the arrays it points into alive, a device source holds device pointers the caller
// keeps alive until the kernel that reads them has run.
struct Source {
  ImageSource images;
  py::object keep;  // the host arrays
  bool on_device = false;
};

// scale[C] and shift[C] of v' = v * scale - shift, one value per channel.
void set_normalization(ImageSource& s, const std::vector<float>& scale, const std::vector<float>& shift) {
  if (s.channels < 1 || s.channels > kMaxChannels) fail("images must have 1 to 4 channels, got " + std::to_string(s.channels));
  if (int64_t(scale.size()) != s.channels || int64_t(shift.size()) != s.channels)
    fail("scale and shift need one value per channel");
  for (int64_t c = 0; c < s.channels; ++c) s.scale[c] = scale[size_t(c)], s.shift[c] = shift[size_t(c)];
}

PixelType pixel_type_of(const py::array& a, const char* what) {
  if (same_dtype(a.dtype(), py::dtype::of<uint8_t>())) return PixelType::kUint8;
  if (same_dtype(a.dtype(), py::dtype::of<float>())) return PixelType::kFloat32;
  throw py::type_error(std::string(what) + " must be uint8 or float32, got " + std::string(py::str(a.dtype())));
}

// Images (N, C, H, W) or (N, H, W, C) in any strides; element strides in the source.
Source host_source(const py::array& images, bool channels_last, const std::vector<float>& scale,
                   const std::vector<float>& shift) {
  Source src;
  ImageSource& s = src.images;
  s.pixel = pixel_type_of(images, "images");
  if (images.ndim() != 4) fail("images must have 4 dimensions (N, C, H, W) or (N, H, W, C)");
  const py::ssize_t item = images.itemsize();
  std::array<int64_t, 4> shape{}, stride{};
  for (int i = 0; i < 4; ++i) {
    if (images.strides(i) % item) fail("image strides must be multiples of the pixel size");
    shape[size_t(i)] = images.shape(i);
    stride[size_t(i)] = images.strides(i) / item;
  }
  const std::array<size_t, 4> axes = channels_last ? std::array<size_t, 4>{0, 3, 1, 2} : std::array<size_t, 4>{0, 1, 2, 3};
  s.data = images.data();
  s.count = shape[0];
  s.channels = shape[axes[1]], s.height = shape[axes[2]], s.width = shape[axes[3]];
  s.stride_n = stride[0], s.stride_c = stride[axes[1]], s.stride_h = stride[axes[2]], s.stride_w = stride[axes[3]];
  set_normalization(s, scale, shift);
  src.keep = images;
  return src;
}

// m channels-last images of their own sizes packed in one buffer: pixels (total,), offsets
// (m,) int64 in elements, sizes (m, 2) int32 (H, W).
Source host_packed_source(const py::array& pixels, int64_t channels, const py::array& offsets, const py::array& sizes,
                          const std::vector<float>& scale, const std::vector<float>& shift) {
  Source src;
  ImageSource& s = src.images;
  s.pixel = pixel_type_of(pixels, "packed images");
  if (pixels.ndim() != 1 || !(pixels.flags() & py::array::c_style)) fail("packed images must be a contiguous 1-d buffer");
  if (offsets.ndim() != 1) fail("packed image offsets must be 1-d");
  s.channels = channels;
  s.count = offsets.shape(0);
  s.image_offset = table<int64_t>(offsets, "offsets", {s.count});
  s.image_size = table<int32_t>(sizes, "sizes", {s.count, 2});
  s.packed_elements = pixels.shape(0);
  s.data = pixels.data();
  s.stride_c = 1, s.stride_w = s.channels;
  s.height = s.width = 1;  // unused: every image has its own size
  set_normalization(s, scale, shift);
  src.keep = py::make_tuple(pixels, offsets, sizes);
  return src;
}

// Images on a GPU: a device pointer, (N, C, H, W) and element strides in that order.
Source device_source(uintptr_t pointer, int pixel, const std::array<int64_t, 4>& shape,
                     const std::array<int64_t, 4>& strides, const std::vector<float>& scale,
                     const std::vector<float>& shift) {
  Source src;
  ImageSource& s = src.images;
  s.data = reinterpret_cast<const void*>(pointer);
  s.pixel = pixel_type_of(pixel);
  s.count = shape[0], s.channels = shape[1], s.height = shape[2], s.width = shape[3];
  s.stride_n = strides[0], s.stride_c = strides[1], s.stride_h = strides[2], s.stride_w = strides[3];
  set_normalization(s, scale, shift);
  src.on_device = true;
  return src;
}

// A packed pool on a GPU (the Python layer checked its offsets and sizes before uploading).
Source device_packed_source(uintptr_t pointer, int pixel, int64_t channels, int64_t count, uintptr_t offsets,
                            uintptr_t sizes, int64_t elements, const std::vector<float>& scale,
                            const std::vector<float>& shift) {
  Source src;
  ImageSource& s = src.images;
  s.data = reinterpret_cast<const void*>(pointer);
  s.pixel = pixel_type_of(pixel);
  s.channels = channels;
  s.count = count;
  s.image_offset = reinterpret_cast<const int64_t*>(offsets);
  s.image_size = reinterpret_cast<const int32_t*>(sizes);
  s.packed_elements = elements;
  s.height = s.width = 1;  // unused: every image has its own size
  s.stride_c = 1, s.stride_w = s.channels;
  set_normalization(s, scale, shift);
  src.on_device = true;
  return src;
}

// EncodeArgs.sources from one or two sources, all on the host or all on a device.
void set_sources(EncodeArgs& a, const std::vector<Source>& sources, bool on_device) {
  if (sources.size() < 1 || sources.size() > 2) fail("one or two image sources");
  for (size_t i = 0; i < sources.size(); ++i) {
    if (sources[i].on_device != on_device)
      fail(on_device ? "encode_cuda: image sources must be on the device (ImageSource.device)"
                     : "encode: image sources must be on the host (ImageSource.host)");
    a.sources[i] = sources[i].images;
  }
}

// The key tables: the whole epoch's (n, k), looked up by the batch's row ids (no gather per
// batch).
void read_tables(EncodeArgs& a, const py::array& index, const py::array& lam, const py::array& row_id) {
  if (index.ndim() != 2) fail("index: must have shape (rows, k)");
  if (row_id.ndim() != 1) fail("row_id: must be one-dimensional");
  a.tables_by_row_id = true;
  a.table_rows = index.shape(0);
  a.rows = row_id.shape(0);
  a.k = int(index.shape(1));
  a.index = table<int64_t>(index, "index", {a.table_rows, a.k});
  a.lam = table<float>(lam, "lam", {a.table_rows, a.k});
  a.row_id = table<int64_t>(row_id, "row_id", {a.rows});
}

// _core.Labels: the private images' labels the core mixes into the rows' soft labels (class
// ids or soft label rows; LabelArgs without its output), on the host (kept alive) or a device.
struct Labels {
  LabelArgs args;
  py::object keep;
  bool on_device = false;
};

// Class ids (n,) int64, or soft label rows (n, classes) float32, C-contiguous.
Labels host_labels(const py::array& labels, int64_t classes, bool renormalize) {
  if (classes < 1) fail("classes must be >= 1");
  Labels l;
  if (same_dtype(labels.dtype(), py::dtype::of<float>())) {
    if (labels.ndim() != 2) fail("soft labels: must have shape (n, classes)");
    l.args.label_count = labels.shape(0);
    if (labels.shape(1) != classes) fail("soft labels: must have `classes` columns");
    l.args.soft = table<float>(labels, "soft labels", {l.args.label_count, classes});
  } else {
    if (labels.ndim() != 1) fail("labels: must be one-dimensional class ids or (n, classes) float32 soft labels");
    l.args.label_count = labels.shape(0);
    l.args.class_ids = table<int64_t>(labels, "labels", {l.args.label_count});
  }
  l.args.classes = classes;
  l.args.renormalize = renormalize;
  l.keep = labels;
  return l;
}

// Labels on a GPU: `count` class ids (int64) or `count` soft label rows of `classes` float32.
Labels device_labels(uintptr_t pointer, int64_t count, int64_t classes, bool renormalize, bool soft) {
  if (classes < 1) fail("classes must be >= 1");
  if (count < 0) fail("the label count must be >= 0");
  Labels l;
  if (soft)
    l.args.soft = reinterpret_cast<const float*>(pointer);
  else
    l.args.class_ids = reinterpret_cast<const int64_t*>(pointer);
  l.args.label_count = count, l.args.classes = classes, l.args.renormalize = renormalize;
  l.on_device = true;
  return l;
}

// The soft-label output (rows, classes) of `labels`, allocated into `soft`.
LabelArgs with_output(const Labels& labels, int64_t rows, py::object& soft) {
  if (labels.on_device) fail("labels on a device go with encode_cuda");
  LabelArgs l = labels.args;
  py::array_t<float> out({rows, l.classes});
  l.out = out.mutable_data();
  soft = out;
  return l;
}

// The CPU encode call: the rows `row_id` of the epoch's key tables into `out`, C-contiguous,
// (rows, C, H, W) or (rows, H, W, C). With `labels`, also returns the rows' soft labels
// (rows, classes) float32, mixed in the same parallel call; else None.
py::object encode(const std::vector<Source>& sources, int private_terms, const py::array& index, const py::array& lam,
                  const py::array& offset, const py::array& flip, const py::array& row_id, const py::bytes& mask_key,
                  uint32_t epoch, int sign, py::array out, int out_type, bool out_channels_last, int num_threads,
                  bool patches_inside, const Labels* labels, const std::string& cpu_kernel) {
  if (cpu_kernel != "auto" && cpu_kernel != "portable") fail("cpu_kernel must be 'auto' or 'portable'");
  EncodeArgs a;
  a.patches_inside = patches_inside;
  set_sources(a, sources, false);
  read_tables(a, index, lam, row_id);
  a.private_terms = private_terms;
  if (private_terms < a.k && sources.size() < 2) fail("public terms need a public image source");
  a.offset = table<int32_t>(offset, "offset", {a.table_rows, a.k, 2});
  a.flip = reinterpret_cast<const uint8_t*>(table<bool>(flip, "flip", {a.table_rows, a.k}));
  read_key(mask_key, a.mask_key);
  a.epoch = epoch;
  a.sign = sign_mode(sign);
  a.out_type = out_type_of(out_type);
  const py::dtype want = a.out_type == OutType::kFloat32   ? py::dtype::of<float>()
                         : a.out_type == OutType::kFloat16 ? py::dtype("float16")
                                                           : py::dtype::of<uint16_t>();
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
  if (labels) label_args = with_output(*labels, a.rows, soft);
  {
    py::gil_scoped_release release;
    encode_cpu(a, num_threads, labels ? &label_args : nullptr,
               cpu_kernel == "portable" ? CpuKernel::kPortable : CpuKernel::kAuto);
  }
  return soft;
}

// Soft labels (rows, classes) float32 of the rows `row_id` from the private images' labels,
// the tables looked up by row id.
py::object mix_labels(const py::array& index, const py::array& lam, const py::array& row_id, int private_terms,
                      const Labels& labels) {
  EncodeArgs a;
  read_tables(a, index, lam, row_id);
  a.private_terms = private_terms;
  py::object soft;
  const LabelArgs l = with_output(labels, a.rows, soft);
  {
    py::gil_scoped_release release;
    mix_labels_cpu(a, l);
  }
  return soft;
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

// The CUDA kernel on device pointers (the epoch's key tables, looked up by the `rows` row ids
// at `row_id`; output C-contiguous), queued on `stream` of `device`; returns before the kernel
// ends. With `labels` (on the device), it also mixes the rows' soft labels into `soft`, a
// device pointer to (rows, classes) float32.
void encode_on_cuda(const std::vector<Source>& sources, int private_terms, int64_t rows, int k, uintptr_t index,
                    uintptr_t lam, uintptr_t offset, uintptr_t flip, uintptr_t row_id, const py::bytes& mask_key,
                    uint32_t epoch, int sign, uintptr_t out, int out_type, bool out_channels_last, int64_t out_height,
                    int64_t out_width, int device, uintptr_t stream, const Labels* labels, uintptr_t soft) {
#if INSTAHIDE_WITH_CUDA
  EncodeArgs a;
  set_sources(a, sources, true);
  a.private_terms = private_terms, a.rows = rows, a.k = k;
  a.index = reinterpret_cast<const int64_t*>(index);
  a.lam = reinterpret_cast<const float*>(lam);
  a.offset = reinterpret_cast<const int32_t*>(offset);
  a.flip = reinterpret_cast<const uint8_t*>(flip);
  a.row_id = reinterpret_cast<const int64_t*>(row_id);
  a.tables_by_row_id = true;
  read_key(mask_key, a.mask_key);
  a.epoch = epoch;
  a.sign = sign_mode(sign);
  a.out = reinterpret_cast<void*>(out);
  a.out_type = out_type_of(out_type);
  a.out_channels_last = out_channels_last;
  a.out_height = out_height, a.out_width = out_width;
  LabelArgs label_args;
  if (labels) {
    if (!labels->on_device) fail("encode_cuda: labels must be on the device (Labels.device)");
    if (!soft) fail("encode_cuda: labels need a soft-label output");
    label_args = labels->args;
    label_args.out = reinterpret_cast<float*>(soft);
  }
  py::gil_scoped_release release;
  CudaDeviceGuard guard(device);
  encode_cuda(a, reinterpret_cast<void*>(stream), labels ? &label_args : nullptr);
#else
  (void)sources, (void)private_terms, (void)rows, (void)k, (void)index, (void)lam, (void)offset, (void)flip;
  (void)row_id, (void)mask_key, (void)epoch, (void)sign, (void)out, (void)out_type, (void)out_channels_last;
  (void)out_height, (void)out_width, (void)device, (void)stream, (void)labels, (void)soft;
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
  py::class_<Source>(m, "ImageSource",
                     "A set of images the core reads, with its per-channel normalization v * scale - shift.")
      .def_static("host", &host_source, py::kw_only(), py::arg("images"), py::arg("channels_last"), py::arg("scale"),
                  py::arg("shift"), "Images (N, C, H, W) or (N, H, W, C), uint8 or float32, any strides.")
      .def_static("host_packed", &host_packed_source, py::kw_only(), py::arg("pixels"), py::arg("channels"),
                  py::arg("offsets"), py::arg("sizes"), py::arg("scale"), py::arg("shift"),
                  "Channels-last images of their own sizes in one buffer (a public pool).")
      .def_static("device", &device_source, py::kw_only(), py::arg("pointer"), py::arg("pixel"), py::arg("shape"),
                  py::arg("strides"), py::arg("scale"), py::arg("shift"),
                  "Images on a GPU: (N, C, H, W) and element strides in that order; pixel 0 uint8, 1 float32.")
      .def_static("device_packed", &device_packed_source, py::kw_only(), py::arg("pointer"), py::arg("pixel"),
                  py::arg("channels"), py::arg("count"), py::arg("offsets"), py::arg("sizes"), py::arg("elements"),
                  py::arg("scale"), py::arg("shift"), "A packed pool on a GPU.")
      .def_property_readonly("count", [](const Source& s) { return s.images.count; })
      .def_property_readonly("channels", [](const Source& s) { return s.images.channels; })
      .def_property_readonly("on_device", [](const Source& s) { return s.on_device; });
  py::class_<Labels>(m, "Labels", "The private images' labels, mixed into the rows' soft labels.")
      .def_static("host", &host_labels, py::kw_only(), py::arg("labels"), py::arg("classes"),
                  py::arg("renormalize") = false, "Class ids (n,) int64 or soft labels (n, classes) float32.")
      .def_static("device", &device_labels, py::kw_only(), py::arg("pointer"), py::arg("count"), py::arg("classes"),
                  py::arg("renormalize"), py::arg("soft"), "Labels on a GPU: class ids int64 or soft labels float32.")
      .def_property_readonly("classes", [](const Labels& l) { return l.args.classes; })
      .def_property_readonly("soft", [](const Labels& l) { return l.args.soft != nullptr; })
      .def_property_readonly("on_device", [](const Labels& l) { return l.on_device; });
  m.def("encode", &encode, py::kw_only(), py::arg("sources"), py::arg("private_terms"), py::arg("index"),
        py::arg("lam"), py::arg("offset"), py::arg("flip"), py::arg("row_id"), py::arg("mask_key"), py::arg("epoch"),
        py::arg("sign"), py::arg("out"), py::arg("out_type"), py::arg("out_channels_last"), py::arg("num_threads") = 0,
        py::arg("patches_inside") = false, py::arg("labels") = nullptr, py::arg("cpu_kernel") = "auto");
  m.def("mix_labels", &mix_labels, py::kw_only(), py::arg("index"), py::arg("lam"), py::arg("row_id"),
        py::arg("private_terms"), py::arg("labels"));
  m.def("mask", &mask, py::arg("key"), py::arg("epoch"), py::arg("row_id"), py::arg("elements"),
        py::arg("num_threads") = 0);
  m.def("chacha20", &chacha20, py::arg("key"), py::arg("nonce"), py::arg("counter"), py::arg("blocks"));
  m.def("available_cores", &available_cores);
  m.def("get_num_threads", &default_threads);
  m.def("set_num_threads", &set_default_threads, py::arg("n"));
  m.def("encode_cuda", &encode_on_cuda, py::kw_only(), py::arg("sources"), py::arg("private_terms"), py::arg("rows"),
        py::arg("k"), py::arg("index"), py::arg("lam"), py::arg("offset"), py::arg("flip"), py::arg("row_id"),
        py::arg("mask_key"), py::arg("epoch"), py::arg("sign"), py::arg("out"), py::arg("out_type"),
        py::arg("out_channels_last"), py::arg("out_height"), py::arg("out_width"), py::arg("device"),
        py::arg("stream"), py::arg("labels") = nullptr, py::arg("soft") = 0);
  m.def("build_info", &build_info);
  m.def("pointer_device", &pointer_device, py::arg("pointer"));
}
