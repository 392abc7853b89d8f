// PyTorch .pth checkpoints without Python: zip archive + restricted pickle interpreter.
//
// torch.save (PyTorch >= 1.6, torch/serialization.py `_save`) writes a zip archive whose records all live under one
// folder, `<archive>/`: `data.pkl` (the pickled object; tensors pickled as torch._utils._rebuild_tensor_v2 calls
// whose storage is a persistent id ('storage', torch.FloatStorage, key, location, numel)), `data/<key>` (each
// storage's raw little-endian bytes), `byteorder` ("little", newer versions) and `version`.
#include <algorithm>
#include <cstring>
#include <set>
#include <sstream>

#include "mambacv/weights.h"
#include "vision/mapped_file.h"
#include "vision/pickle.h"
#include "vision/zip_reader.h"

namespace mambacv {
namespace {

namespace pk = detail::pickle;

// A tensor we could not rebuild (unsupported storage type) is an Opaque "tensor on storage of type ...".
bool is_unsupported_tensor(const pk::Object* o) {
  return o->kind == pk::Kind::Opaque && o->s.rfind("tensor on ", 0) == 0;
}

bool is_tensor_dict(const pk::Object* o) {
  if (o->kind != pk::Kind::Dict) return false;
  for (const auto& kv : o->dict)
    if (kv.second->kind == pk::Kind::Tensor || is_unsupported_tensor(kv.second)) return true;
  return false;
}

const pk::Object* dict_get(const pk::Object* d, const std::string& key) {
  if (d->kind != pk::Kind::Dict) return nullptr;
  for (const auto& kv : d->dict)
    if (kv.first->kind == pk::Kind::Str && kv.first->s == key) return kv.second;
  return nullptr;
}

// Copies a strided view of `src` (elements of `esize` bytes) into contiguous `dst`: row-major over `size`, source
// element at offset + sum(index_d * stride_d).
void gather_strided(const uint8_t* src, uint8_t* dst, size_t esize, int64_t offset, const Shape& size,
                    const Shape& stride) {
  const int nd = static_cast<int>(size.size());
  int64_t numel = shape_numel(size);
  if (numel == 0) return;
  // Fast path: already contiguous.
  bool contiguous = true;
  int64_t expect = 1;  // products of trailing sizes stay <= numel, which the pickle checked for overflow
  for (int d = nd - 1; d >= 0; --d) {
    if (size[d] != 1 && stride[d] != expect) contiguous = false;
    expect *= size[d];
  }
  if (contiguous) {
    std::memcpy(dst, src + offset * esize, static_cast<size_t>(numel) * esize);
    return;
  }
  // Odometer over all but the last dimension; the last one is copied as a (possibly strided) row.
  const int64_t row = nd ? size[nd - 1] : 1, rstride = nd ? stride[nd - 1] : 1;
  std::vector<int64_t> idx(std::max(nd - 1, 0), 0);
  for (int64_t done = 0; done < numel; done += row) {
    int64_t base = offset;
    for (int d = 0; d < nd - 1; ++d) base += idx[d] * stride[d];
    if (rstride == 1) {
      std::memcpy(dst, src + base * esize, static_cast<size_t>(row) * esize);
      dst += row * esize;
    } else {
      for (int64_t j = 0; j < row; ++j, dst += esize) std::memcpy(dst, src + (base + j * rstride) * esize, esize);
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

WeightFile load_pth(const std::string& path, const PthOptions& options) {
  auto file = detail::MappedFile::open(path);
  const uint8_t* b = file->data();
  MAMBACV_CHECK(file->size() >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6)),
                path << ": not a PyTorch zip checkpoint (no zip signature; checkpoints written by torch.save before "
                        "PyTorch 1.6 are not supported: re-save them with a recent torch.save)");
  detail::ZipReader zip(file, path);

  // The pickle: `<archive>/data.pkl` (the shallowest such record if several).
  const detail::ZipEntry* pkl = nullptr;
  for (const auto& e : zip.entries()) {
    const std::string& n = e.name;
    if (n.size() < 8 || n.compare(n.size() - 8, 8, "data.pkl") != 0) continue;
    if (n.size() > 8 && n[n.size() - 9] != '/') continue;
    if (!pkl || std::count(n.begin(), n.end(), '/') < std::count(pkl->name.begin(), pkl->name.end(), '/')) pkl = &e;
  }
  if (!pkl) {
    std::ostringstream names;
    for (size_t i = 0; i < zip.entries().size() && i < 5; ++i) names << (i ? ", " : "") << zip.entries()[i].name;
    MAMBACV_FAIL(path << ": zip archive has no data.pkl record, so it is not a PyTorch checkpoint (records: "
                      << (names.str().empty() ? "none" : names.str()) << (zip.entries().size() > 5 ? ", ..." : "")
                      << ")");
  }
  const std::string prefix = pkl->name.substr(0, pkl->name.size() - 8);
  if (const detail::ZipEntry* bo = zip.find(prefix + "byteorder")) {
    detail::ZipData d = zip.read(*bo, options.verify_checksums);
    std::string order(reinterpret_cast<const char*>(d.data), std::min<size_t>(d.size, 16));
    MAMBACV_CHECK(order == "little", path << ": checkpoint byte order '" << order
                                          << "' is not supported (only little-endian)");
  }

  // The pickle program is small (about 100 bytes per tensor; 10^5 tensors need ~10 MB): a larger one is refused
  // before it is inflated, so a deflate bomb costs no memory.
  constexpr uint64_t kMaxPickleBytes = uint64_t{64} << 20;
  MAMBACV_CHECK(pkl->uncompressed_size <= kMaxPickleBytes,
                path << ": record '" << pkl->name << "' is " << pkl->uncompressed_size
                     << " bytes uncompressed, more than the " << kMaxPickleBytes
                     << " a checkpoint's pickle may have (about 100 bytes per tensor)");
  detail::ZipData program = zip.read(*pkl, options.verify_checksums);
  pk::Unpickler unpickler(program.data, program.size, path + ": " + pkl->name);
  const pk::Object* top = unpickler.load();

  // Which dict holds the weights.
  const pk::Object* sd = nullptr;
  std::string source_key;
  for (const char* key : {"model", "state_dict", "model_ema"}) {
    const pk::Object* v = dict_get(top, key);
    if (v && is_tensor_dict(v)) {
      sd = v;
      source_key = key;
      break;
    }
  }
  if (!sd && is_tensor_dict(top)) sd = top;
  if (!sd) {
    std::ostringstream msg;
    msg << path << ": no tensor state dict found in the checkpoint (looked for \"model\", \"state_dict\", \"model_ema\" "
        << "or a top-level dict of tensors); the top level is a " << pk::describe(top);
    if (top->kind == pk::Kind::Dict) {
      msg << " with keys:";
      size_t n = 0;
      for (const auto& kv : top->dict) {
        if (++n > 40) {
          msg << " ...";
          break;
        }
        const std::string key = kv.first->kind == pk::Kind::Str ? kv.first->s.substr(0, 100) : pk::describe(kv.first);
        msg << " " << key << " (" << pk::describe(kv.second).substr(0, 200) << ")";
      }
    }
    throw Error(msg.str());
  }

  WeightFile wf;
  wf.path = path;
  wf.metadata["source_key"] = source_key;
  wf.metadata["format"] = "pth";

  // Budget for the copies: tensors may view shared storages, but never more than twice the storage bytes overall
  // (guards against a small hostile file describing many huge overlapping views).
  uint64_t storage_bytes = 0;
  std::set<std::string> counted;
  for (const auto& kv : sd->dict) {
    if (kv.second->kind != pk::Kind::Tensor) continue;
    const std::string& key = kv.second->items[0]->s;
    const detail::ZipEntry* e = zip.find(prefix + "data/" + key);
    if (e && counted.insert(key).second) storage_bytes += std::min<uint64_t>(e->uncompressed_size, file->size() * 1100);
  }
  const uint64_t budget = 2 * storage_bytes + (1u << 20);
  uint64_t allocated = 0;

  std::map<std::string, detail::ZipData> storages;  // zip record bytes by storage key, read once
  std::string skipped;
  for (const auto& [k, v] : sd->dict) {
    MAMBACV_CHECK(k->kind == pk::Kind::Str,
                  path << ": state dict \"" << source_key << "\" has a non-string key (" << pk::describe(k) << ")");
    const std::string& raw_name = k->s;
    if (v->kind != pk::Kind::Tensor) {
      MAMBACV_CHECK(!is_unsupported_tensor(v),
                    path << ": tensor '" << raw_name << "' uses an unsupported " << v->s.substr(10)
                         << " (supported: float, half, bfloat16, double and integer/bool storages)");
      skipped += (skipped.empty() ? "" : ",") + raw_name;
      continue;
    }
    const std::string name = raw_name.rfind("module.", 0) == 0 ? raw_name.substr(7) : raw_name;
    MAMBACV_CHECK(!wf.tensors.count(name), path << ": tensor '" << name << "' appears twice (with and without the "
                                                << "\"module.\" prefix)");
    const pk::Object* st = v->items[0];
    const size_t esize = dtype_size(v->dtype);
    auto it = storages.find(st->s);
    if (it == storages.end()) {
      const detail::ZipEntry* e = zip.find(prefix + "data/" + st->s);
      MAMBACV_CHECK(e, path << ": tensor '" << raw_name << "': storage record '" << prefix << "data/" << st->s
                            << "' is missing from the archive");
      it = storages.emplace(st->s, zip.read(*e, options.verify_checksums)).first;
    }
    const detail::ZipData& bytes = it->second;
    // The pickle checked the view against the storage's declared element count; check that count against the
    // record's actual size.
    MAMBACV_CHECK(static_cast<uint64_t>(st->i) <= bytes.size / esize,
                  path << ": tensor '" << raw_name << "': storage '" << st->s << "' declares " << st->i << " "
                       << dtype_name(v->dtype) << " elements but its record holds " << bytes.size << " bytes");
    allocated += static_cast<uint64_t>(shape_numel(v->size)) * esize;  // no overflow: checked by the pickle
    MAMBACV_CHECK(allocated <= budget, path << ": tensors need " << allocated << " bytes, more than twice their "
                                            << storage_bytes << " bytes of storage (corrupt checkpoint)");
    Tensor t = Tensor::empty(v->size, v->dtype);
    gather_strided(bytes.data, static_cast<uint8_t*>(t.raw()), esize, v->i, v->size, v->stride);
    wf.tensors.emplace(name, std::move(t));
  }
  if (!skipped.empty()) wf.metadata["skipped"] = skipped;
  return wf;
}

}  // namespace mambacv
