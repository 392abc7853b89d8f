// mambacv/tensor.h - the library's tensor: shape, dtype, device, owning or view.
//
// A Tensor is always dense and row-major (C-contiguous). It shares its storage through a reference-counted
// holder, so copies are cheap views of the same bytes; `clone()` makes an independent copy. A view may keep
// an external buffer alive (e.g. a memory-mapped weight file) through the same holder.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "mambacv/dtype.h"
#include "mambacv/error.h"

namespace mambacv {

enum class Device : uint8_t { Cpu, Cuda };
const char* device_name(Device d);
// Parses "cpu" / "cuda"; throws Error naming the option on anything else.
Device parse_device(const std::string& s);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "(2, 3, 64, 64)"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised / zero-filled owning tensors (64-byte aligned).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::Cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::Cpu);
  // Owning copy of `n` floats.
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  // Non-owning view of external memory; `keepalive` (may be null) is held as long as the view lives.
  static Tensor view_of(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive = nullptr,
                        Device device = Device::Cpu);

  bool defined() const { return data_ != nullptr || (!shape_.empty() && numel() == 0); }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // size of dimension i; negative i counts from the end. Throws on out of range.
  int64_t dim(int i) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  std::string str() const;  // "f32(2, 3, 64, 64)"

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  // Typed access; throws if T does not match dtype().
  template <class T>
  T* data();
  template <class T>
  const T* data() const;
  float* f32() { return data<float>(); }
  const float* f32() const { return data<float>(); }

  // Same storage, new shape (numel must match; one dim may be -1).
  Tensor reshape(const Shape& shape) const;
  // View of rows [begin, end) along dimension 0.
  Tensor slice0(int64_t begin, int64_t end) const;
  // Independent contiguous copy.
  Tensor clone() const;
  // Converted copy (or *this when dtype already matches and copy is false).
  Tensor to(DType dtype, bool copy = false) const;
  void fill(float v);  // f32 / f16 / bf16 only
  bool shares_storage_with(const Tensor& o) const { return holder_ && holder_ == o.holder_; }

 private:
  std::shared_ptr<void> holder_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::Cpu;
};

template <class T>
T* Tensor::data() {
  MAMBACV_CHECK(dtype_ == dtype_of<T>(), "tensor " << str() << " accessed as " << dtype_name(dtype_of<T>()));
  MAMBACV_CHECK(device_ == Device::Cpu, "tensor " << str() << " lives on " << device_name(device_)
                                                  << " and cannot be read on the host");
  return static_cast<T*>(data_);
}
template <class T>
const T* Tensor::data() const {
  return const_cast<Tensor*>(this)->data<T>();
}

// Relative L2 error ||a - ref|| / ||ref|| (ref all-zero: ||a||) and max abs error, computed in double.
struct Compare {
  double rel_l2 = 0;
  double max_abs = 0;
  bool finite = true;  // false if `a` holds a NaN or Inf
};
Compare compare(const Tensor& a, const Tensor& ref);

}  // namespace mambacv
