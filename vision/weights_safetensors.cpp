// safetensors read (memory-mapped, validated) and write.
//
// Format (huggingface/safetensors, docs "format"): [u64 little-endian N][N bytes of UTF-8 JSON header][data].
// The header is a JSON object: an optional "__metadata__" string->string map, and for every tensor
//   "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
// with offsets relative to the start of the data section. The reference implementation (safetensors/src/tensor.rs,
// `Metadata::validate`) requires: N <= 100'000'000, 8 + N <= file size, entries sorted by offset are contiguous
// from 0 (no gap, no overlap), end - begin == numel * dtype size, and the last end is exactly the data size.
// Writers pad the header with spaces so the data starts at a multiple of 8; a tensor itself may still sit at an
// offset that is not a multiple of its element size, so such a tensor is copied into an aligned buffer.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "mambacv/weights.h"
#include "vision/mapped_file.h"

namespace mambacv {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // reference MAX_HEADER_SIZE

// safetensors dtype spelling <-> DType. Types the library does not have (F8_*, U16/U32/U64, C64, ...) are
// rejected by name when loading.
struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kDTypeNames[] = {
    {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I64", DType::I64},
    {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},   {"U8", DType::U8},     {"BOOL", DType::Bool},
};

bool parse_dtype(const std::string& s, DType* out) {
  for (const auto& d : kDTypeNames)
    if (s == d.name) {
      *out = d.dtype;
      return true;
    }
  return false;
}

const char* safetensors_dtype_name(DType t) {
  for (const auto& d : kDTypeNames)
    if (d.dtype == t) return d.name;
  return "?";
}

// One tensor entry of the header, before the data is attached.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// A value for an error message: scalars as JSON, containers by type and size (never a recursive dump of an
// arbitrarily deep or large value from a hostile header).
std::string brief(const nlohmann::json& v) {
  if (v.is_primitive()) {
    std::string s = v.dump();
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
  }
  return std::string(v.type_name()) + " of " + std::to_string(v.size()) + " elements";
}

uint64_t json_uint(const nlohmann::json& v, const std::string& path, const std::string& tensor, const char* field) {
  MAMBACV_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
                path << ": tensor '" << tensor << "': " << field << " must hold non-negative integers, found "
                     << brief(v));
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& info) {
  MAMBACV_CHECK(info.is_object(), path << ": tensor '" << name << "': header entry must be an object, found "
                                       << info.type_name());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    MAMBACV_CHECK(info.contains(field), path << ": tensor '" << name << "': header entry has no \"" << field << "\"");
  Entry e;
  e.name = name;
  const auto& jd = info["dtype"];
  MAMBACV_CHECK(jd.is_string(), path << ": tensor '" << name << "': dtype must be a string, found " << brief(jd));
  MAMBACV_CHECK(parse_dtype(jd.get<std::string>(), &e.dtype),
                path << ": tensor '" << name << "': unknown or unsupported dtype '" << jd.get<std::string>()
                     << "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  const auto& js = info["shape"];
  MAMBACV_CHECK(js.is_array(), path << ": tensor '" << name << "': shape must be an array, found " << brief(js));
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : js) {
    uint64_t v = json_uint(d, path, name, "shape");
    overflow |= v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
                __builtin_mul_overflow(numel, v, &numel);
    e.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(v, std::numeric_limits<int64_t>::max())));
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes) ||
              nbytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  MAMBACV_CHECK(!overflow, path << ": tensor '" << name << "': shape " << shape_str(e.shape)
                                << " overflows the element count");
  const auto& jo = info["data_offsets"];
  MAMBACV_CHECK(jo.is_array() && jo.size() == 2,
                path << ": tensor '" << name << "': data_offsets must be [begin, end], found " << brief(jo));
  e.begin = json_uint(jo[0], path, name, "data_offsets");
  e.end = json_uint(jo[1], path, name, "data_offsets");
  MAMBACV_CHECK(e.begin <= e.end, path << ": tensor '" << name << "': data_offsets [" << e.begin << ", " << e.end
                                       << "] end before they begin");
  MAMBACV_CHECK(e.end - e.begin == nbytes, path << ": tensor '" << name << "': data_offsets [" << e.begin << ", "
                                                << e.end << "] span " << (e.end - e.begin) << " bytes but "
                                                << jd.get<std::string>() << shape_str(e.shape) << " needs " << nbytes);
  return e;
}

}  // namespace

WeightFile load_safetensors(const std::string& path) {
  auto file = detail::MappedFile::open(path);
  const uint8_t* base = file->data();
  const uint64_t size = file->size();
  MAMBACV_CHECK(size >= 8, path << ": not a safetensors file: " << size << " bytes, too short for the 8-byte header "
                                << "length");
  const uint64_t n = detail::read_le(base, 8);
  MAMBACV_CHECK(n <= kMaxHeaderBytes, path << ": safetensors header length " << n << " exceeds the " << kMaxHeaderBytes
                                           << "-byte limit (corrupt or not a safetensors file)");
  MAMBACV_CHECK(n <= size - 8, path << ": safetensors header length " << n << " runs past the end of the file ("
                                    << size << " bytes; truncated or not a safetensors file)");

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + n));
  } catch (const std::exception& ex) {
    MAMBACV_FAIL(path << ": safetensors header is not valid JSON: " << ex.what());
  }
  MAMBACV_CHECK(header.is_object(), path << ": safetensors header must be a JSON object, found " << header.type_name());

  WeightFile wf;
  wf.path = path;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      const auto& m = it.value();
      if (m.is_null()) continue;
      MAMBACV_CHECK(m.is_object(), path << ": __metadata__ must be an object of strings, found " << m.type_name());
      for (auto mi = m.begin(); mi != m.end(); ++mi) {
        MAMBACV_CHECK(mi.value().is_string(), path << ": __metadata__ entry '" << mi.key() << "' must be a string, found "
                                                   << brief(mi.value()));
        wf.metadata[mi.key()] = mi.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), it.value()));
  }

  // Contiguity: sorted by offsets, each tensor begins where the previous one ended, the last ends at the data end.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const uint64_t data_size = size - 8 - n;
  uint64_t expect = 0;
  for (const Entry& e : entries) {
    MAMBACV_CHECK(e.begin == expect, path << ": tensor '" << e.name << "': data_offsets [" << e.begin << ", " << e.end
                                          << "] should begin at " << expect << " ("
                                          << (e.begin < expect ? "overlaps the previous tensor"
                                                               : "leaves a gap after the previous tensor")
                                          << "; tensors must be contiguous)");
    MAMBACV_CHECK(e.end <= data_size, path << ": tensor '" << e.name << "': data_offsets [" << e.begin << ", " << e.end
                                           << "] run past the end of the data section (" << data_size << " bytes)");
    expect = e.end;
  }
  MAMBACV_CHECK(expect == data_size, path << ": the tensors cover " << expect << " bytes but the data section holds "
                                          << data_size << " (trailing bytes: corrupt file)");

  const uint8_t* data = base + 8 + n;
  std::shared_ptr<void> keepalive = file;
  for (const Entry& e : entries) {
    const uint8_t* p = data + e.begin;
    const size_t esize = dtype_size(e.dtype);
    if (reinterpret_cast<uintptr_t>(p) % esize == 0) {
      wf.tensors[e.name] = Tensor::view_of(const_cast<uint8_t*>(p), e.shape, e.dtype, keepalive);
    } else {  // misaligned for its element type: copy into an aligned owned buffer
      Tensor t = Tensor::empty(e.shape, e.dtype);
      if (t.nbytes()) std::memcpy(t.raw(), p, t.nbytes());
      wf.tensors[e.name] = std::move(t);
    }
  }
  return wf;
}

namespace {
void check_savable(const std::string& path, const std::string& name, const Tensor& t) {
  MAMBACV_CHECK(name != "__metadata__", path << ": a tensor may not be named __metadata__");
  MAMBACV_CHECK(t.defined(), path << ": tensor '" << name << "' is undefined");
  MAMBACV_CHECK(t.device() == Device::Cpu, path << ": tensor '" << name << "' lives on " << device_name(t.device())
                                                << "; copy it to the CPU before saving");
}
bool write_all(FILE* f, const void* p, size_t n) { return n == 0 || std::fwrite(p, 1, n, f) == n; }
}  // namespace

struct SafetensorsWriter::Spool {
  std::string path;
  FILE* f = nullptr;
  uint64_t bytes = 0;
};

SafetensorsWriter::SafetensorsWriter(const std::string& path) : path_(path) {}

SafetensorsWriter::~SafetensorsWriter() { discard(); }

void SafetensorsWriter::discard() {
  for (auto& s : spools_) {
    if (s->f) std::fclose(s->f);
    s->f = nullptr;
    std::remove(s->path.c_str());
  }
  spools_.clear();
}

SafetensorsWriter::Spool& SafetensorsWriter::spool(size_t k) {
  while (spools_.size() <= k) {
    auto s = std::make_unique<Spool>();
    s->path = path_ + ".part" + std::to_string(spools_.size());
    s->f = std::fopen(s->path.c_str(), "wb");
    MAMBACV_CHECK(s->f, path_ << ": cannot create " << s->path << ": " << std::strerror(errno));
    spools_.push_back(std::move(s));
  }
  return *spools_[k];
}

void SafetensorsWriter::write_spool(Spool& s, const Tensor& t) {
  MAMBACV_CHECK(write_all(s.f, t.raw(), t.nbytes()), path_ << ": cannot write " << s.path << ": "
                                                            << std::strerror(errno));
  s.bytes += t.nbytes();
}

void SafetensorsWriter::add(const std::string& name, const Tensor& t) {
  check_savable(path_, name, t);
  MAMBACV_CHECK(!index_.count(name), path_ << ": tensor '" << name << "' written twice");
  Spool& s = spool(0);  // whole tensors share the first spool, in arrival order
  index_[name] = entries_.size();
  entries_.push_back({name, t.dtype(), t.shape(), 0, s.bytes, 0});
  write_spool(s, t);
}

void SafetensorsWriter::append_row(const std::string& name, const Tensor& t) {
  check_savable(path_, name, t);
  auto it = index_.find(name);
  if (it == index_.end()) {
    spool(0);  // keep spool 0 for whole tensors
    index_[name] = entries_.size();
    entries_.push_back({name, t.dtype(), t.shape(), 0, 0, spools_.size()});
    spool(spools_.size());
    it = index_.find(name);
  }
  Entry& e = entries_[it->second];
  MAMBACV_CHECK(e.spool > 0, path_ << ": tensor '" << name << "' was written whole, it cannot take rows");
  MAMBACV_CHECK(t.dtype() == e.dtype && t.shape() == e.row_shape,
                path_ << ": row " << e.rows << " of '" << name << "' is " << t.str() << ", the earlier rows are "
                      << dtype_name(e.dtype) << shape_str(e.row_shape));
  write_spool(*spools_[e.spool], t);
  ++e.rows;
}

void SafetensorsWriter::finish(const std::map<std::string, std::string>& metadata) {
  // Layout: the whole tensors (spool 0, in arrival order), then each stacked tensor's rows.
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::vector<uint64_t> spool_base(spools_.size(), 0);
  uint64_t base = 0;
  for (size_t k = 0; k < spools_.size(); ++k) {
    spool_base[k] = base;
    base += spools_[k]->bytes;
  }
  for (const Entry& e : entries_) {
    nlohmann::json j;
    j["dtype"] = safetensors_dtype_name(e.dtype);
    uint64_t begin = spool_base[e.spool] + e.offset, bytes;
    if (e.spool == 0) {
      j["shape"] = e.row_shape;
      bytes = static_cast<uint64_t>(shape_numel(e.row_shape)) * dtype_size(e.dtype);
    } else {
      Shape stacked = {e.rows};
      stacked.insert(stacked.end(), e.row_shape.begin(), e.row_shape.end());
      j["shape"] = stacked;
      bytes = spools_[e.spool]->bytes;
    }
    j["data_offsets"] = {begin, begin + bytes};
    header[e.name] = std::move(j);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const std::exception& ex) {  // e.g. a name that is not valid UTF-8
    MAMBACV_FAIL(path_ << ": cannot write the safetensors header: " << ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  // Write PATH.tmp, then rename over PATH: readers never see a half-written file.
  const std::string tmp = path_ + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  MAMBACV_CHECK(f, path_ << ": cannot create " << tmp << ": " << std::strerror(errno));
  bool ok = write_all(f, len, 8) && write_all(f, text.data(), text.size());
  std::vector<char> buf(1 << 20);
  for (auto& s : spools_) {
    if (!ok) break;
    ok = std::fclose(s->f) == 0;
    s->f = ok ? std::fopen(s->path.c_str(), "rb") : nullptr;
    ok = ok && s->f;
    for (size_t n; ok && (n = std::fread(buf.data(), 1, buf.size(), s->f)) > 0;) ok = write_all(f, buf.data(), n);
  }
  int err = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && std::rename(tmp.c_str(), path_.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  discard();
  if (!ok) {
    std::remove(tmp.c_str());
    MAMBACV_FAIL(path_ << ": cannot write safetensors file: " << std::strerror(err));
  }
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w(path);
  for (const auto& [name, t] : tensors) w.add(name, t);  // name order
  w.finish(metadata);
}

}  // namespace mambacv
