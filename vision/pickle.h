// vision/pickle.h - a restricted pickle interpreter for PyTorch checkpoints (private to the .pth loader).
//
// It is not a Python unpickler: it understands an allow-list of opcodes (the binary protocol 2-5 subset that
// torch.save emits) and an allow-list of globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and
// friends, torch.*Storage). Any other global (argparse.Namespace, numpy scalars, optimizer classes, os.system...)
// becomes an Opaque value: REDUCE / NEWOBJ / BUILD on it yield another Opaque value; nothing is ever executed.
// Tensors are not read here: _rebuild_tensor_v2 yields a TensorRef (storage key, dtype, offset, size, stride),
// materialised later by the caller for the tensors it actually wants.
//
// Every size read from the stream is bounded (stack, mark depth, memo, object count, string length against the
// remaining bytes, tensor rank and element counts), and the interpreter never recurses, so a hostile or corrupt
// pickle ends in an Error naming `where`, never in a crash, runaway allocation or hang.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mambacv/tensor.h"

namespace mambacv::detail::pickle {

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Opaque, Storage, Tensor };

// Known globals; everything else is Global::Unknown (a placeholder whose calls produce Opaque values).
enum class Global : uint8_t {
  Unknown,
  OrderedDict,
  RebuildTensorV2,       // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...)
  RebuildTensor,         // torch._utils._rebuild_tensor(storage, offset, size, stride) (older torch)
  RebuildParameter,      // torch._utils._rebuild_parameter(data, requires_grad, hooks[, state])
  RebuildFromTypeV2,     // torch._tensor._rebuild_from_type_v2(func, new_type, args, state)
  StorageType,           // torch.FloatStorage etc.; `dtype` says which
};

struct Object;
using Ref = Object*;  // objects live in the Unpickler's arena; cycles are harmless

struct Object {
  Kind kind = Kind::None;
  int64_t i = 0;        // Bool / Int; Storage: element count; Tensor: storage offset (elements)
  double f = 0;         // Float
  std::string s;        // Str / Bytes; Global and Opaque: "module.name"; Storage: zip record key
  std::vector<Ref> items;                 // Tuple / List; Tensor: {storage}
  std::vector<std::pair<Ref, Ref>> dict;  // Dict, in insertion order
  std::unique_ptr<std::unordered_map<std::string, size_t>> str_keys;  // Dict: position of each string key
  Global global = Global::Unknown;        // Global
  DType dtype = DType::F32;               // StorageType global / Storage / Tensor
  Shape size, stride;                     // Tensor (elements)
};

// Short human description for error messages: "int", "dict(3)", "tensor f32(2, 3)", "object argparse.Namespace".
std::string describe(const Object* o);

class Unpickler {
 public:
  // `where` prefixes every error message (e.g. "model.pth: archive/data.pkl").
  Unpickler(const uint8_t* data, size_t size, std::string where);
  ~Unpickler();
  // Runs the program up to STOP and returns the result; the objects live as long as the Unpickler.
  Ref load();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mambacv::detail::pickle
