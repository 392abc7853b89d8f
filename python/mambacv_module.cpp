// The Python module (_mambacv, re-exported by the mambacv package): the public C++ API in NumPy terms.
//
// Inputs are read in place: a C-contiguous, aligned float32 array (NumPy, anything with the buffer protocol,
// or a DLPack producer such as a PyTorch tensor) becomes a non-owning Tensor view of the caller's memory; any
// other layout is copied once into a contiguous array. Outputs are NumPy arrays that own the library's result
// tensors (no copy). The GIL is released while the library works, so Python threads run models concurrently.
// Every library failure arrives as mambacv.Error with the library's message; the binding's own checks name
// the argument and what was expected.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mambacv/detection.h"
#include "mambacv/mambacv.h"

namespace py = pybind11;
using namespace mambacv;

namespace {

// ---- DLPack -------------------------------------------------------------------------------------------
// The unversioned ABI every producer offers through __dlpack__: a DLManagedTensor in a "dltensor" capsule.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
constexpr int32_t kDLCPU = 1, kDLCUDAHost = 3, kDLROCMHost = 11;  // memory the host can read
constexpr uint8_t kDLFloat = 2;

const char* dl_device_name(int32_t t) {
  switch (t) {
    case 1:
      return "CPU";
    case 2:
      return "CUDA";
    case 3:
      return "CUDA host";
    case 4:
      return "OpenCL";
    case 7:
      return "Vulkan";
    case 8:
      return "Metal";
    case 9:
      return "VPI";
    case 10:
      return "ROCm";
    case 11:
      return "ROCm host";
    case 13:
      return "CUDA managed";
    case 14:
      return "oneAPI";
    default:
      return "unknown";
  }
}
bool host_readable(int32_t t) {
  return t == kDLCPU || t == kDLCUDAHost || t == kDLROCMHost;
}

std::string type_name(py::handle h) {
  return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>();
}
// "RuntimeError: message" of a Python exception, without the traceback error_already_set::what() appends.
std::string python_error(const py::error_already_set& e) {
  return py::str(e.type().attr("__name__")).cast<std::string>() + ": " +
         py::str(e.value()).cast<std::string>();
}

// Consumes a DLPack capsule (or calls obj.__dlpack__()) and returns a NumPy array over the producer's memory,
// with the producer's strides. The array owns the DLManagedTensor: the producer's deleter runs when it is
// freed.
py::array dlpack_to_numpy(py::handle obj, const std::string& what) {
  py::object cap;
  if (PyCapsule_CheckExact(obj.ptr())) {
    cap = py::reinterpret_borrow<py::object>(obj);
  } else {
    if (!py::hasattr(obj, "__dlpack__"))
      throw Error(what + ": expected an object with __dlpack__ or a DLPack capsule, got " + type_name(obj));
    if (py::hasattr(obj, "__dlpack_device__")) {
      int32_t dev = -1;
      try {
        py::tuple d = obj.attr("__dlpack_device__")();
        dev = d[0].cast<int32_t>();
      } catch (const py::error_already_set& e) {
        throw Error(what + ": __dlpack_device__() failed: " + python_error(e));
      }
      if (!host_readable(dev))
        throw Error(what + ": the " + type_name(obj) + " lives on a " + dl_device_name(dev) +
                    " device (DLPack type " + std::to_string(dev) +
                    "); mambacv reads host memory: move it to the CPU first (e.g. .cpu())");
    }
    try {
      cap = obj.attr("__dlpack__")();
    } catch (const py::error_already_set& e) {
      throw Error(what + ": " + type_name(obj) + ".__dlpack__() failed: " + python_error(e));
    }
  }
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor"))
    throw Error(what +
                ": not an unconsumed DLPack capsule (a capsule named \"dltensor\"; one already used cannot "
                "be read again)");
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  // Take ownership (the producer's capsule destructor leaves a renamed capsule alone, as the protocol says).
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  py::capsule owner(mt, [](void* p) {
    auto* m = static_cast<DLManagedTensor*>(p);
    if (m->deleter) m->deleter(m);
  });
  const DLTensor& t = mt->dl_tensor;
  if (!host_readable(t.device.device_type))
    throw Error(what + ": DLPack tensor lives on a " + std::string(dl_device_name(t.device.device_type)) +
                " device; mambacv reads host memory: move it to the CPU first");
  if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1)
    throw Error(what + ": expected float32 elements, got DLPack dtype (code " + std::to_string(t.dtype.code) +
                ", bits " + std::to_string(t.dtype.bits) + ", lanes " + std::to_string(t.dtype.lanes) +
                "); convert to float32 first");
  if (t.ndim < 0 || t.ndim > 32)
    throw Error(what + ": DLPack tensor has " + std::to_string(t.ndim) + " dimensions");
  std::vector<py::ssize_t> shape(t.ndim), strides(t.ndim);
  py::ssize_t step = sizeof(float);
  for (int i = t.ndim - 1; i >= 0; --i) {
    shape[i] = static_cast<py::ssize_t>(t.shape[i]);
    strides[i] =
        t.strides ? static_cast<py::ssize_t>(t.strides[i]) * static_cast<py::ssize_t>(sizeof(float)) : step;
    step *= std::max<py::ssize_t>(shape[i], 1);
  }
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  return py::array(py::dtype::of<float>(), shape, strides, data, owner);
}

// ---- arrays in -----------------------------------------------------------------------------------------
// The address of the buffer the last call on this thread handed to the library, and whether the binding had
// to copy the caller's array to get it (mambacv._last_input()). Tests check that zero-copy really happens.
struct LastInput {
  uintptr_t address = 0;
  bool copied = false;
};
thread_local LastInput g_last_input;

py::array as_array(py::handle x, const std::string& what, const char* expected) {
  if (py::isinstance<py::array>(x)) return py::reinterpret_borrow<py::array>(x);
  if (PyCapsule_CheckExact(x.ptr()) || py::hasattr(x, "__dlpack__")) return dlpack_to_numpy(x, what);
  if (PyObject_CheckBuffer(x.ptr())) {
    py::array a = py::array::ensure(x);
    if (a) return a;
    throw Error(what + ": the " + type_name(x) + "'s buffer cannot be read as an array");
  }
  throw Error(what + ": expected " + expected +
              " (a NumPy array, a buffer-protocol object or a DLPack tensor), got " + type_name(x));
}

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}
std::string dtype_of(const py::array& a) {
  return py::str(a.dtype()).cast<std::string>();
}

bool reads_in_place(const py::array& a) {
  return (a.flags() & py::array::c_style) && (reinterpret_cast<uintptr_t>(a.data()) % alignof(float)) == 0;
}
py::array contiguous_copy(const py::array& a) {
  py::array c = py::array::ensure(a, py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  if (!c) throw Error("could not make a contiguous copy of an array of shape " + shape_of(a));
  return c;
}

// A caller's float32 array as a Tensor: a view of its memory when it is C-contiguous and aligned, else of one
// contiguous copy. `keep` holds whichever array the view reads.
struct InputView {
  py::array keep;
  Tensor t;
  bool copied = false;
};

InputView float_view(py::handle x, const std::string& what, const char* expected) {
  InputView v;
  v.keep = as_array(x, what, expected);
  if (!v.keep.dtype().equal(py::dtype::of<float>()))
    throw Error(what + ": expected float32 elements, got " + dtype_of(v.keep) +
                " (convert with .astype(numpy.float32))");
  if (!reads_in_place(v.keep)) {
    v.keep = contiguous_copy(v.keep);
    v.copied = true;
  }
  Shape shape(v.keep.shape(), v.keep.shape() + v.keep.ndim());
  v.t = Tensor::view_of(const_cast<void*>(v.keep.data()), shape, DType::F32);
  return v;
}

// x: (N, 3, H, W) float32 images.
InputView image_batch(py::handle x, const std::string& what) {
  const char* expected = "a float32 array of shape (N, 3, H, W)";
  InputView v = float_view(x, what, expected);
  if (v.keep.ndim() != 4 || v.keep.shape(1) != 3)
    throw Error(what + ": expected shape (N, 3, H, W) (normalised RGB images, channels first), got " +
                shape_of(v.keep) + (v.keep.ndim() == 3 ? "; add the batch axis with x[None]" : ""));
  if (v.keep.shape(0) < 1 || v.keep.shape(2) < 1 || v.keep.shape(3) < 1)
    throw Error(what + ": expected a non-empty batch (N, 3, H, W), got " + shape_of(v.keep));
  g_last_input = {reinterpret_cast<uintptr_t>(v.t.raw()), v.copied};
  return v;
}

// 8-bit pixels (H, W) or (H, W, C) with C 1, 3 or 4; rows may be any stride apart (cv2 / NumPy crops).
struct PixelView {
  py::array keep;
  const uint8_t* data = nullptr;
  int width = 0, height = 0;
  size_t stride = 0;
  PixelFormat fmt = PixelFormat::Rgb8;
};

PixelView pixels_of(py::handle image, const std::string& what, const std::string& color) {
  const char* expected = "uint8 pixels of shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W)";
  PixelView p;
  p.keep = as_array(image, what, expected);
  if (!p.keep.dtype().equal(py::dtype::of<uint8_t>()))
    throw Error(what + ": expected uint8 pixels, got " + dtype_of(p.keep) +
                " (for [0, 1] floats: (image * 255).round().astype(numpy.uint8))");
  const py::ssize_t nd = p.keep.ndim();
  const py::ssize_t c = nd == 3 ? p.keep.shape(2) : 1;
  if ((nd != 2 && nd != 3) || (c != 1 && c != 3 && c != 4))
    throw Error(what + ": expected shape (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got " + shape_of(p.keep));
  if (p.keep.shape(0) < 1 || p.keep.shape(1) < 1)
    throw Error(what + ": the image is empty, shape " + shape_of(p.keep));
  if (p.keep.shape(0) > INT32_MAX || p.keep.shape(1) > INT32_MAX)
    throw Error(what + ": image of shape " + shape_of(p.keep) + " is larger than 2^31 - 1 pixels on a side");
  if (color != "rgb" && color != "bgr") throw Error("color: expected 'rgb' or 'bgr', got '" + color + "'");
  // Pixels packed within a row (any row stride): read in place; other layouts are copied once.
  const bool packed = p.keep.strides(0) >= p.keep.shape(1) * c && p.keep.strides(1) == c &&
                      (nd == 2 || p.keep.strides(2) == 1);
  if (!packed) p.keep = contiguous_copy(p.keep);
  p.data = static_cast<const uint8_t*>(p.keep.data());
  p.height = static_cast<int>(p.keep.shape(0));
  p.width = static_cast<int>(p.keep.shape(1));
  p.stride = static_cast<size_t>(p.keep.strides(0));
  const bool bgr = color == "bgr";
  p.fmt = c == 1   ? PixelFormat::Gray8
          : c == 3 ? (bgr ? PixelFormat::Bgr8 : PixelFormat::Rgb8)
                   : (bgr ? PixelFormat::Bgra8 : PixelFormat::Rgba8);
  return p;
}

// float32 logits (B, classes) or (classes,).
InputView logits_view(py::handle logits, const std::string& what) {
  InputView v = float_view(logits, what, "float32 logits of shape (B, classes) or (classes,)");
  if (v.keep.ndim() != 1 && v.keep.ndim() != 2)
    throw Error(what + ": expected shape (B, classes) or (classes,), got " + shape_of(v.keep));
  return v;
}

// ---- arrays out ----------------------------------------------------------------------------------------
// A NumPy array that owns (a reference to) the tensor's storage; bf16, which NumPy lacks, is widened to f32.
py::array to_numpy(const Tensor& t) {
  MAMBACV_CHECK(t.device() == Device::Cpu, "result tensor " << t.str() << " is not in host memory");
  Tensor h = t.dtype() == DType::BF16 ? t.to(DType::F32) : t;
  py::dtype dt;
  switch (h.dtype()) {
    case DType::F32:
      dt = py::dtype::of<float>();
      break;
    case DType::F16:
      dt = py::dtype("float16");
      break;
    case DType::F64:
      dt = py::dtype::of<double>();
      break;
    case DType::I64:
      dt = py::dtype::of<int64_t>();
      break;
    case DType::I32:
      dt = py::dtype::of<int32_t>();
      break;
    case DType::I16:
      dt = py::dtype::of<int16_t>();
      break;
    case DType::I8:
      dt = py::dtype::of<int8_t>();
      break;
    case DType::U8:
      dt = py::dtype::of<uint8_t>();
      break;
    case DType::Bool:
      dt = py::dtype("bool");
      break;
    default:
      MAMBACV_FAIL("result tensor " << h.str() << ": no NumPy dtype");
  }
  std::vector<py::ssize_t> shape(h.shape().begin(), h.shape().end()), strides(shape.size());
  py::ssize_t step = static_cast<py::ssize_t>(dtype_size(h.dtype()));
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = step;
    step *= std::max<py::ssize_t>(shape[i], 1);
  }
  if (h.numel() == 0) return py::array(dt, shape, strides);
  auto* keep = new Tensor(h);
  py::capsule owner(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(dt, shape, strides, keep->raw(), owner);
}

py::dict to_numpy(const std::map<std::string, Tensor>& m) {
  py::dict d;
  for (const auto& [k, v] : m) d[py::str(k)] = to_numpy(v);
  return d;
}

py::array image_to_numpy(Image&& im) {
  auto* keep = new std::vector<uint8_t>(std::move(im.rgb));
  py::capsule owner(keep, [](void* p) { delete static_cast<std::vector<uint8_t>*>(p); });
  return py::array(
      py::dtype::of<uint8_t>(),
      {static_cast<py::ssize_t>(im.height), static_cast<py::ssize_t>(im.width), static_cast<py::ssize_t>(3)},
      {static_cast<py::ssize_t>(im.width) * 3, static_cast<py::ssize_t>(3), static_cast<py::ssize_t>(1)},
      keep->data(), owner);
}

// ---- options -------------------------------------------------------------------------------------------
Options make_options(const std::string& device, const std::string& dtype, const std::string& core,
                     int threads, int host_cache_mb, bool check_finite, int batch_group) {
  Options o;
  try {
    o.device = parse_device(device);
  } catch (const Error&) {
    throw Error("device: expected 'cpu' or 'cuda', got '" + device + "'");
  }
  try {
    o.dtype = parse_compute_dtype(dtype);
  } catch (const Error&) {
    throw Error("dtype: expected 'f32', 'f16' or 'bf16', got '" + dtype + "'");
  }
  try {
    o.core = parse_core(core);
  } catch (const Error&) {
    throw Error("core: expected 'v0' or 'v1', got '" + core + "'");
  }
  if (threads < 0)
    throw Error("threads: expected 0 (every core) or a positive count, got " + std::to_string(threads));
  o.threads = threads;
  o.host_cache_mb = host_cache_mb;
  o.check_finite = check_finite;
  if (batch_group < 0)
    throw Error("batch_group: expected 0 (chosen from the L2 cache) or a count of images, got " +
                std::to_string(batch_group));
  o.batch_group = batch_group;
  return o;
}

py::dict options_dict(const Options& o) {
  py::dict d;
  d["device"] = device_name(o.device);
  d["dtype"] = dtype_name(o.dtype);
  d["core"] = core_name(o.core);
  d["threads"] = o.threads;
  d["host_cache_mb"] = o.host_cache_mb;
  d["check_finite"] = o.check_finite;
  d["batch_group"] = o.batch_group;
  return d;
}

// Runs f, prefixing a library error with the argument it concerns.
template <class F>
auto named(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
}

ModelConfig config_arg(const std::string& fn, const std::string& config) {
  return named(fn + ": config", [&] { return load_model_config(config); });
}

// The weights of a load: the given file, else the one the config names (the golden fixtures do).
WeightFile weights_arg(const std::string& fn, const ModelConfig& cfg,
                       const std::optional<std::string>& weights) {
  std::string path = weights ? *weights : cfg.weights;
  if (path.empty()) {
    std::string m = fn + ": weights: required (.pth or .safetensors) for config " + cfg.name;
    if (!cfg.checkpoint.empty()) m += ": the released checkpoint is " + cfg.checkpoint;
    if (!cfg.checkpoint_url.empty()) m += " from " + cfg.checkpoint_url;
    throw Error(m + "; or use .random(...) to try the pipeline without it");
  }
  return named(fn + ": weights", [&] { return load_weights(path); });
}

py::object label_or_none(const std::string& s) {
  return s.empty() ? py::object(py::none()) : py::object(py::str(s));
}

py::list scores_list(const std::vector<ClassScore>& row) {
  py::list l;
  for (const ClassScore& c : row) {
    py::dict d;
    d["index"] = c.index;
    d["label"] = label_or_none(c.label);
    d["prob"] = c.prob;
    l.append(d);
  }
  return l;
}

// top_k over logits (B, classes) -> one list per row, or over (classes,) -> one list.
py::list top_k_py(py::handle logits, int k, const std::vector<std::string>& labels, const std::string& fn) {
  InputView v = logits_view(logits, fn + ": logits");
  if (k < 1) throw Error(fn + ": k: expected k >= 1, got " + std::to_string(k));
  const int n = static_cast<int>(v.t.dim(-1));
  if (v.t.ndim() == 1) return scores_list(top_k(v.t.f32(), n, k, labels));
  py::list rows;
  for (const auto& r : top_k(v.t, k, labels)) rows.append(scores_list(r));
  return rows;
}

py::dict summary_dict(const ModelSummary& s) {
  py::dict d;
  d["name"] = s.name;
  d["arch"] = s.arch;
  d["task"] = s.task;
  d["description"] = s.description;
  d["input"] = py::make_tuple(s.input_width, s.input_height);
  d["classes"] = s.num_classes;
  d["parameters"] = s.parameters;
  d["checkpoint"] = s.checkpoint;
  d["checkpoint_url"] = s.checkpoint_url;
  return d;
}

py::dict compare_dict(const Compare& c) {
  py::dict d;
  d["rel_l2"] = c.rel_l2;
  d["max_abs"] = c.max_abs;
  d["finite"] = c.finite;
  return d;
}

// One profile as [{'stage', 'op', 'calls', 'seconds', 'flops', 'bytes', 'threads'}], in the order first seen.
py::list op_stats_list(const std::vector<OpStat>& stats) {
  py::list l;
  for (const OpStat& s : stats) {
    py::dict d;
    d["stage"] = s.stage;
    d["op"] = s.op;
    d["calls"] = s.calls;
    d["seconds"] = s.seconds;
    d["flops"] = s.flops;
    d["bytes"] = s.bytes;
    d["threads"] = s.threads;
    l.append(d);
  }
  return l;
}

py::list detections_list(const DetectionResult& r, const std::vector<std::string>& names, bool masks) {
  py::list out;
  for (const Detection& d : r.detections) {
    py::dict e;
    e["label"] = d.label;
    e["name"] = d.label >= 0 && d.label < static_cast<int>(names.size()) ? label_or_none(names[d.label])
                                                                         : py::object(py::none());
    e["score"] = d.score;
    e["box"] = py::make_tuple(d.box[0], d.box[1], d.box[2], d.box[3]);
    if (masks) {
      py::dict m;
      m["size"] = py::make_tuple(d.mask.height, d.mask.width);
      m["counts"] = d.mask.coco_string();
      e["mask"] = m;
    } else {
      e["mask"] = py::none();
    }
    out.append(e);
  }
  return out;
}

DetectOptions detect_options(std::optional<float> score_thr, std::optional<int> max_per_img, bool masks) {
  DetectOptions o;
  if (score_thr) o.score_thr = *score_thr;
  if (max_per_img) o.max_per_img = *max_per_img;
  o.masks = masks;
  return o;
}

// The inference options every load takes, as keyword-only arguments.
#define MAMBACV_OPTION_ARGS                                                                   \
  py::kw_only(), py::arg("device") = "cpu", py::arg("dtype") = "f32", py::arg("core") = "v0", \
                 py::arg("threads") = 0, py::arg("host_cache_mb") = -1, py::arg("check_finite") = false, \
                 py::arg("batch_group") = 0

}  // namespace

PYBIND11_MODULE(_mambacv, m) {
  m.doc() = "mambacv: Vim and VMamba image models (C++17, no Python dependency beyond NumPy)";
  m.attr("__version__") = MAMBACV_VERSION_STRING;
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);

  py::class_<InputSpec>(
      m, "InputSpec",
      "The classification eval transform: shorter side to floor(size / crop_pct) (PIL bicubic), "
      "center crop size x size, ImageNet mean / std.")
      .def(
          py::init([](int size, double crop_pct, std::array<float, 3> mean, std::array<float, 3> std) {
            if (size < 1) throw Error("InputSpec: size: expected >= 1, got " + std::to_string(size));
            if (!(crop_pct > 0 && crop_pct <= 1))
              throw Error("InputSpec: crop_pct: expected 0 < crop_pct <= 1, got " + std::to_string(crop_pct));
            InputSpec s;
            s.size = size;
            s.crop_pct = crop_pct;
            s.mean = mean;
            s.std = std;
            return s;
          }),
          py::arg("size") = 224, py::arg("crop_pct") = 0.875,
          py::arg("mean") = std::array<float, 3>{0.485f, 0.456f, 0.406f},
          py::arg("std") = std::array<float, 3>{0.229f, 0.224f, 0.225f})
      .def_readwrite("size", &InputSpec::size)
      .def_readwrite("crop_pct", &InputSpec::crop_pct)
      .def_readwrite("mean", &InputSpec::mean)
      .def_readwrite("std", &InputSpec::std)
      .def_property_readonly("resize_size", &InputSpec::resize_size)
      .def("__repr__", [](const InputSpec& s) {
        return "InputSpec(size=" + std::to_string(s.size) +
               ", crop_pct=" + py::repr(py::float_(s.crop_pct)).cast<std::string>() + ")";
      });

  m.def(
      "load_image",
      [](const std::string& path) {
        Image im;
        {
          py::gil_scoped_release nogil;
          im = named("load_image: path", [&] { return load_image(path); });
        }
        return image_to_numpy(std::move(im));
      },
      py::arg("path"),
      "Decodes an image file as PIL's Image.open(path).convert('RGB') sees it: uint8 (H, W, 3) RGB.");

  m.def(
      "preprocess",
      [](py::handle image, const InputSpec& spec, const std::string& color) {
        PixelView p = pixels_of(image, "preprocess: image", color);
        Tensor t;
        {
          py::gil_scoped_release nogil;
          t = preprocess(p.data, p.width, p.height, p.stride, p.fmt, spec);
        }
        return to_numpy(t);
      },
      py::arg("image"), py::arg("spec") = InputSpec(), py::arg("color") = "rgb",
      "The eval transform of `spec` on uint8 pixels (H, W, 3|4|1) or (H, W): float32 (1, 3, size, size). "
      "color='bgr' for OpenCV's arrays (cv2.imread).");

  m.def(
      "from_dlpack", [](py::handle obj) { return dlpack_to_numpy(obj, "from_dlpack: obj"); }, py::arg("obj"),
      "A NumPy array over a DLPack producer's memory (float32, host memory), without a copy; it keeps the "
      "producer's "
      "buffer alive.");

  m.def(
      "top_k",
      [](py::handle logits, int k, std::optional<std::vector<std::string>> labels) {
        return top_k_py(logits, k, labels ? *labels : std::vector<std::string>{}, "top_k");
      },
      py::arg("logits"), py::arg("k") = 5, py::arg("labels") = py::none(),
      "Softmax and the k most probable classes, best first: [{'index', 'label', 'prob'}] per row.");

  m.def(
      "models",
      []() {
        py::list out;
        for (const std::string& name : list_model_configs())
          out.append(summary_dict(summarize_model(load_model_config(name))));
        return out;
      },
      "Every shipped config: name, arch, task, description, input (width, height), classes, parameters, "
      "checkpoint, checkpoint_url.");

  m.def("config_search_path", &config_search_path, "Folders named configs are looked up in, in order.");
  m.def("set_config_dirs", &set_config_dirs, py::arg("dirs"), "Puts `dirs` first in the config search path.");

  m.def(
      "load_weights",
      [](const std::string& path) {
        WeightFile w;
        {
          py::gil_scoped_release nogil;
          w = named("load_weights: path", [&] { return load_weights(path); });
        }
        py::dict d;
        for (const auto& [k, v] : w.tensors) d[py::str(k)] = to_numpy(v);
        return d;
      },
      py::arg("path"),
      "The tensors of a .safetensors or .pth file as NumPy arrays (bf16 widened to float32).");

  m.def(
      "check_cores",
      [](const std::string& config, std::optional<std::string> weights, py::object x,
         const std::string& dtype, int threads, uint64_t seed) {
        ModelConfig cfg = config_arg("check_cores", config);
        const Options o = make_options("cpu", dtype, "v0", threads, -1, false, 0);
        std::optional<WeightFile> wf;
        if (weights || !cfg.weights.empty()) wf = weights_arg("check_cores", cfg, weights);
        InputView in;
        if (!x.is_none()) {
          in = image_batch(x, "check_cores: x");
        } else {
          const ModelSummary s = summarize_model(cfg);
          in.t = Tensor::empty({1, 3, s.input_height, s.input_width});
          std::mt19937_64 rng(seed);
          std::normal_distribution<float> nd(0.0f, 1.0f);
          float* p = in.t.f32();
          for (int64_t i = 0; i < in.t.numel(); ++i) p[i] = nd(rng);
        }
        CoreCheckReport r;
        {
          py::gil_scoped_release nogil;
          r = check_cores(cfg, wf ? &wf->tensors : nullptr, in.t, o.dtype, threads);
        }
        py::dict d;
        d["dtype"] = dtype_name(r.dtype);
        d["tolerance"] = r.tolerance;
        d["passed"] = r.passed;
        d["top1_agree"] = r.top1_agree;
        d["top1_total"] = r.top1_total;
        py::list rows;
        for (const CoreCheckRow& row : r.rows) {
          py::dict e;
          e["tensor"] = row.tensor;
          e["v1_vs_v0"] = compare_dict(row.v1_vs_v0);
          e["v0_vs_f32"] = compare_dict(row.v0_vs_f32);
          e["v1_vs_f32"] = compare_dict(row.v1_vs_f32);
          rows.append(e);
        }
        d["rows"] = rows;
        return d;
      },
      py::arg("config"), py::arg("weights") = py::none(), py::arg("x") = py::none(),
      py::arg("dtype") = "bf16", py::arg("threads") = 0, py::arg("seed") = 0,
      "Core v0 against core v1 (and each against f32) on the same weights and input. weights: a file, else "
      "the "
      "config's own, else random weights; x: (N, 3, H, W) float32, else a random input of the model's size.");

  m.def(
      "_last_input",
      []() { return py::make_tuple(static_cast<uint64_t>(g_last_input.address), g_last_input.copied); },
      "(address, copied) of the image batch the last call on this thread handed to the library (for tests).");

  py::class_<Model>(
      m, "Model",
      "A loaded Vim / VMamba model. Immutable: one instance may serve several Python threads at once.")
      .def_static(
          "load",
          [](const std::string& config, std::optional<std::string> weights, const std::string& device,
             const std::string& dtype, const std::string& core, int threads, int host_cache_mb,
             bool check_finite, int batch_group) {
            const Options o = make_options(device, dtype, core, threads, host_cache_mb, check_finite, batch_group);
            py::gil_scoped_release nogil;
            ModelConfig cfg = config_arg("Model.load", config);
            WeightFile w = weights_arg("Model.load", cfg, weights);
            return Model::load(cfg, w.tensors, o, w.path);
          },
          py::arg("config"), py::arg("weights") = py::none(), MAMBACV_OPTION_ARGS,
          "Loads a config (a shipped name or a .json) and its weights (.pth as released upstream, or "
          ".safetensors; "
          "a config that names its own weights file needs none).")
      .def_static(
          "random",
          [](const std::string& config, uint64_t seed, const std::string& device, const std::string& dtype,
             const std::string& core, int threads, int host_cache_mb, bool check_finite, int batch_group) {
            const Options o = make_options(device, dtype, core, threads, host_cache_mb, check_finite, batch_group);
            py::gil_scoped_release nogil;
            ModelConfig cfg = config_arg("Model.random", config);
            return Model::random(cfg, o, seed);
          },
          py::arg("config"), py::arg("seed") = 0, MAMBACV_OPTION_ARGS,
          "Random weights with the upstream initialisation's scale (benchmarks, shape checks): outputs mean "
          "nothing.")
      .def(
          "classify",
          [](const Model& self, py::handle x) {
            InputView in = image_batch(x, "Model.classify: x");
            Tensor out;
            {
              py::gil_scoped_release nogil;
              out = self.classify(in.t);
            }
            return to_numpy(out);
          },
          py::arg("x"), "x: float32 (N, 3, H, W) normalised images -> float32 logits (N, classes).")
      .def(
          "features",
          [](const Model& self, py::handle x) {
            InputView in = image_batch(x, "Model.features: x");
            std::map<std::string, Tensor> out;
            {
              py::gil_scoped_release nogil;
              out = self.features(in.t);
            }
            return to_numpy(out);
          },
          py::arg("x"),
          "Named features: VMamba 'stage.i' (NCHW) and 'embedding' (N, C); backbones 'features.i'; Vim 'cls' "
          "and "
          "'tokens'.")
      .def(
          "forward_all",
          [](const Model& self, py::handle x) {
            InputView in = image_batch(x, "Model.forward_all: x");
            std::map<std::string, Tensor> out;
            {
              py::gil_scoped_release nogil;
              out = self.forward_all(in.t);
            }
            return to_numpy(out);
          },
          py::arg("x"), "Every tensor the model produces, named and laid out as in the golden fixtures.")
      .def(
          "topk",
          [](const Model& self, py::handle logits, int k) {
            return top_k_py(logits, k, self.class_names(), "Model.topk");
          },
          py::arg("logits"), py::arg("k") = 5,
          "The k most probable classes of each row of logits, named from the model's labels.")
      .def(
          "profile",
          [](const Model& self, py::handle x) {
            InputView in = image_batch(x, "Model.profile: x");
            std::vector<OpStat> stats;
            {
              py::gil_scoped_release nogil;
              stats = self.profile(in.t);
            }
            return op_stats_list(stats);
          },
          py::arg("x"),
          "One forward pass with every op timed: [{'stage', 'op', 'calls', 'seconds', 'flops', ...}].")
      .def(
          "flops_per_image",
          [](const Model& self, int height, int width) {
            py::gil_scoped_release nogil;
            return self.flops_per_image(height, width);
          },
          py::arg("height"), py::arg("width"))
      .def(
          "_time_classify",
          [](const Model& self, py::handle x, int iters) {
            // The same calls timed inside C++ (no Python per call): the bench's reference for the binding's
            // cost.
            InputView in = image_batch(x, "Model._time_classify: x");
            std::vector<double> ms;
            py::gil_scoped_release nogil;
            for (int i = 0; i < iters; ++i) {
              auto t0 = std::chrono::steady_clock::now();
              Tensor out = self.classify(in.t);
              ms.push_back(
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            }
            return ms;
          },
          py::arg("x"), py::arg("iters"))
      .def_property_readonly("arch", &Model::arch)
      .def_property_readonly("input_size", &Model::input_size)
      .def_property_readonly("input_spec", &Model::input_spec)
      .def_property_readonly("num_classes", &Model::num_classes)
      .def_property_readonly("class_names", &Model::class_names)
      .def_property_readonly("num_parameters", &Model::num_parameters)
      .def_property_readonly("cached_bytes", &Model::cached_bytes)
      .def_property_readonly("options", [](const Model& self) { return options_dict(self.options()); })
      .def("__repr__", [](const Model& self) {
        const Options& o = self.options();
        return "<mambacv.Model " + self.arch() + " " + dtype_name(o.dtype) + " core " + core_name(o.core) +
               ", " + std::to_string(self.num_parameters()) + " parameters>";
      });

  py::class_<Detector>(
      m, "Detector",
      "Mask R-CNN + FPN on a VMamba backbone (mmdetection's test path). Immutable; thread-safe.")
      .def_static(
          "load",
          [](const std::string& config, std::optional<std::string> weights, const std::string& device,
             const std::string& dtype, const std::string& core, int threads, int host_cache_mb,
             bool check_finite, int batch_group) {
            const Options o = make_options(device, dtype, core, threads, host_cache_mb, check_finite, batch_group);
            py::gil_scoped_release nogil;
            ModelConfig cfg = config_arg("Detector.load", config);
            if (cfg.arch != "mask_rcnn")
              throw Error("Detector.load: config: " + cfg.path + " has arch \"" + cfg.arch +
                          "\", expected \"mask_rcnn\"");
            WeightFile w = weights_arg("Detector.load", cfg, weights);
            Model model = Model::load(cfg, w.tensors, o, w.path);
            const int n = Detector(model).num_classes();
            return Detector(std::move(model), load_labels(cfg, n));
          },
          py::arg("config"), py::arg("weights") = py::none(), MAMBACV_OPTION_ARGS)
      .def_static(
          "random",
          [](const std::string& config, uint64_t seed, const std::string& device, const std::string& dtype,
             const std::string& core, int threads, int host_cache_mb, bool check_finite, int batch_group) {
            const Options o = make_options(device, dtype, core, threads, host_cache_mb, check_finite, batch_group);
            py::gil_scoped_release nogil;
            return named("Detector.random", [&] { return Detector::random(config, o, seed); });
          },
          py::arg("config"), py::arg("seed") = 0, MAMBACV_OPTION_ARGS)
      .def(
          "detect",
          [](const Detector& self, py::handle image, std::optional<float> score_thr,
             std::optional<int> max_per_img, bool masks, const std::string& color) {
            PixelView p = pixels_of(image, "Detector.detect: image", color);
            DetectionResult r;
            {
              py::gil_scoped_release nogil;
              Image im = image_from_pixels(p.data, p.width, p.height, p.stride, p.fmt);
              r = self.detect(im, detect_options(score_thr, max_per_img, masks));
            }
            return detections_list(r, self.class_names(), masks);
          },
          py::arg("image"), py::kw_only(), py::arg("score_thr") = py::none(),
          py::arg("max_per_img") = py::none(), py::arg("masks") = true, py::arg("color") = "rgb",
          "uint8 pixels (H, W, 3) -> [{'label', 'name', 'score', 'box': (x1, y1, x2, y2), 'mask': {'size': "
          "(H, W), "
          "'counts': COCO RLE}}], boxes and masks in the image's pixels, by descending score.")
      .def(
          "profile",
          [](const Detector& self, py::handle image, std::optional<float> score_thr,
             std::optional<int> max_per_img, bool masks, const std::string& color) {
            PixelView p = pixels_of(image, "Detector.profile: image", color);
            std::vector<OpStat> stats;
            {
              py::gil_scoped_release nogil;
              Image im = image_from_pixels(p.data, p.width, p.height, p.stride, p.fmt);
              stats = self.profile(im, detect_options(score_thr, max_per_img, masks));
            }
            return op_stats_list(stats);
          },
          py::arg("image"), py::kw_only(), py::arg("score_thr") = py::none(),
          py::arg("max_per_img") = py::none(), py::arg("masks") = true, py::arg("color") = "rgb",
          "One detect(image) with every op timed: [{'stage', 'op', 'calls', 'seconds', 'flops', ...}], stages "
          "the backbone's, then 'fpn', 'rpn', 'box_head' and 'mask_head'.")
      .def(
          "detect_many",
          [](const Detector& self, const py::sequence& images, std::optional<float> score_thr,
             std::optional<int> max_per_img, bool masks, const std::string& color) {
            std::vector<PixelView> pixels;
            for (size_t i = 0; i < images.size(); ++i)
              pixels.push_back(pixels_of(images[i], "Detector.detect_many: images[" + std::to_string(i) + "]", color));
            std::vector<DetectionResult> r;
            {
              py::gil_scoped_release nogil;
              std::vector<Image> ims;
              for (const PixelView& p : pixels)
                ims.push_back(image_from_pixels(p.data, p.width, p.height, p.stride, p.fmt));
              r = self.detect(ims, detect_options(score_thr, max_per_img, masks));
            }
            py::list out;
            for (const DetectionResult& one : r) out.append(detections_list(one, self.class_names(), masks));
            return out;
          },
          py::arg("images"), py::kw_only(), py::arg("score_thr") = py::none(),
          py::arg("max_per_img") = py::none(), py::arg("masks") = true, py::arg("color") = "rgb",
          "A list of uint8 images -> one detect() list per image. Images of the same padded network size share a "
          "forward; each result equals detect(image).")
      .def(
          "detect_input",
          [](const Detector& self, py::handle x, int height, int width, std::optional<float> score_thr,
             std::optional<int> max_per_img, bool masks) {
            InputView in = image_batch(x, "Detector.detect_input: x");
            DetectionResult r;
            {
              py::gil_scoped_release nogil;
              r = self.detect(in.t, height, width, detect_options(score_thr, max_per_img, masks));
            }
            return detections_list(r, self.class_names(), masks);
          },
          py::arg("x"), py::arg("height"), py::arg("width"), py::kw_only(), py::arg("score_thr") = py::none(),
          py::arg("max_per_img") = py::none(), py::arg("masks") = true,
          "A prepared input (1, 3, H, W) (normalised, zero padded) whose content is height x width; boxes "
          "and masks "
          "refer to that content.")
      .def(
          "forward_all",
          [](const Detector& self, py::handle x, int height, int width) {
            InputView in = image_batch(x, "Detector.forward_all: x");
            std::map<std::string, Tensor> out;
            {
              py::gil_scoped_release nogil;
              out = self.forward_all(in.t, height, width);
            }
            return to_numpy(out);
          },
          py::arg("x"), py::arg("height"), py::arg("width"))
      .def_property_readonly("num_classes", &Detector::num_classes)
      .def_property_readonly("class_names", &Detector::class_names)
      .def_property_readonly("model", &Detector::model);
}
