// mambacv/weights.h - weight files: safetensors (read + write) and PyTorch .pth checkpoints (no Python).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mambacv/tensor.h"

namespace mambacv {

using TensorMap = std::map<std::string, Tensor>;

struct WeightFile {
  std::string path;
  TensorMap tensors;                           // in the file's own dtypes (CPU)
  std::map<std::string, std::string> metadata;  // safetensors "__metadata__"; .pth: {"source_key": "model", ...}
};

// safetensors (https://github.com/huggingface/safetensors format): the file is memory-mapped and the returned
// tensors are views into the mapping (kept alive by the tensors). Validated like the reference implementation:
// header size cap (100 MB), JSON object header, known dtypes, shape entries >= 0, data_offsets [begin, end] in range,
// contiguous and non-overlapping covering the whole data section, byte size = dtype size x numel.
// Any violation throws Error naming the file (and the tensor).
WeightFile load_safetensors(const std::string& path);

// Writes tensors (any dtype) and optional string metadata in safetensors format; tensors are written in name
// order. Throws Error naming the file on I/O failure.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A safetensors file written as its tensors arrive, in bounded memory: data is spooled to PATH.part<k> files and
// finish() writes the header and the spooled bytes to PATH (through PATH.tmp, renamed), then removes the spools.
// add() takes a whole tensor; append_row() adds one row block to a stacked tensor (rows, ...row shape) whose rows
// must all have one dtype and shape. Destroyed without finish(): the spools are removed and PATH is untouched.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(const std::string& path);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  void add(const std::string& name, const Tensor& t);
  void append_row(const std::string& name, const Tensor& t);
  void finish(const std::map<std::string, std::string>& metadata = {});

 private:
  struct Spool;
  struct Entry {
    std::string name;
    DType dtype;
    Shape row_shape;   // the whole tensor's shape, or a stacked tensor's row shape
    int64_t rows;      // stacked tensors
    uint64_t offset;   // whole tensors: byte offset in spool 0
    size_t spool;      // 0: a whole tensor; k > 0: the stacked tensor's own spool
  };
  Spool& spool(size_t k);
  void write_spool(Spool& s, const Tensor& t);
  void discard();
  std::string path_;
  std::vector<std::unique_ptr<Spool>> spools_;
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
};

// Options of load_pth.
struct PthOptions {
  // Check the CRC-32 of every zip record read (data.pkl and the storages of the selected tensors). Costs about
  // one pass over the bytes; turning it off only makes sense for fuzzing the parser or when the file is trusted.
  bool verify_checksums = true;
};

// PyTorch checkpoint (.pth / .pt zip archive: `archive/data.pkl` + `archive/data/<key>` storages).
// Interprets an allow-list of pickle opcodes and globals (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch.*Storage, ...): never runs code, bounds every size it reads. Objects it cannot interpret (argparse.Namespace,
// optimizer state, ...) become opaque placeholders and are skipped. The state dict is taken from "model", else
// "state_dict", else "model_ema", else the top level if it is itself a dict of tensors; a leading "module." is
// stripped from every name. metadata["source_key"] names the entry used ("" when the top level is the state dict).
// Tensors are returned contiguous and owned (the file is not kept mapped). Non-tensor values inside the state dict
// are skipped and listed in metadata["skipped"]. Legacy (pre-1.6, non-zip) torch.save files are not supported.
WeightFile load_pth(const std::string& path, const PthOptions& options = {});

// By content: safetensors, or a zip archive (.pth). Throws Error naming the file when it is neither.
WeightFile load_weights(const std::string& path);

// Expected parameter of a model: name and shape.
struct ParamSpec {
  std::string name;
  Shape shape;
};

// Strict matching: throws one Error (naming `source`) that lists every missing, unexpected and wrongly shaped
// tensor by name with expected and actual shapes. Non-float tensors where floats are expected count as wrong.
void check_weights_match(const TensorMap& weights, const std::vector<ParamSpec>& expected, const std::string& source);

}  // namespace mambacv
