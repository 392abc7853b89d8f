// Weight files: safetensors read/write and validation, PyTorch .pth checkpoints (zip + pickle), strict matching.
#include <gtest/gtest.h>

#include <chrono>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "mambacv/weights.h"
#include "test_util.h"

namespace mambacv {
namespace {

using Bytes = std::string;

void write_file(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(f.good()) << path;
}

Bytes read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void put_le(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A safetensors file from a literal header and data section (no validation: for building broken files).
Bytes raw_safetensors(const std::string& header, const Bytes& data, uint64_t claimed_len = UINT64_MAX) {
  Bytes b;
  put_le(b, claimed_len == UINT64_MAX ? header.size() : claimed_len, 8);
  return b + header + data;
}

// Expects load_weights / load_* to throw mambacv::Error whose message names the file and contains `what`.
template <class F>
void expect_error(F&& f, const std::string& path, const std::string& what = "") {
  try {
    f();
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    if (!what.empty()) {
      EXPECT_NE(msg.find(what), std::string::npos) << "message lacks '" << what << "': " << msg;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-mambacv exception for " << path << ": " << e.what();
  }
}

// Same names, shapes, dtypes and bytes.
void expect_identical(const TensorMap& a, const TensorMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    const Tensor& u = it->second;
    EXPECT_EQ(t.dtype(), u.dtype()) << name;
    ASSERT_EQ(t.shape(), u.shape()) << name;
    EXPECT_EQ(0, std::memcmp(t.raw(), u.raw(), t.nbytes())) << name;
  }
}

// ---- safetensors ------------------------------------------------------------------------------------------------

TEST(Safetensors, LoadsEveryFixture) {
  MAMBACV_REQUIRE_FIXTURES();
  namespace fs = std::filesystem;
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(test::fixture(""))) {
    if (e.path().extension() != ".safetensors") continue;
    SCOPED_TRACE(e.path().string());
    WeightFile wf = load_safetensors(e.path().string());
    EXPECT_FALSE(wf.tensors.empty());
    for (const auto& [name, t] : wf.tensors) {
      EXPECT_EQ(t.device(), Device::Cpu);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % dtype_size(t.dtype()), 0u) << name;
    }
    ++files;
  }
  EXPECT_GE(files, 10);
  WeightFile vim = load_safetensors(test::fixture("vim_mini.weights.safetensors"));
  ASSERT_TRUE(vim.tensors.count("cls_token"));
  EXPECT_EQ(vim.tensors.at("cls_token").shape(), (Shape{1, 1, 64}));
  EXPECT_EQ(vim.tensors.at("cls_token").dtype(), DType::F32);
  EXPECT_EQ(vim.path, test::fixture("vim_mini.weights.safetensors"));
}

TEST(Safetensors, ViewsOutliveTheWeightFile) {
  MAMBACV_REQUIRE_FIXTURES();
  Tensor t;
  {
    WeightFile wf = load_safetensors(test::fixture("vim_mini.weights.safetensors"));
    t = wf.tensors.at("pos_embed");
  }
  Tensor c = t.clone();  // the mapping is still alive
  EXPECT_EQ(0, std::memcmp(c.raw(), t.raw(), t.nbytes()));
}

Tensor iota_tensor(const Shape& shape, DType dt, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw());
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  if (dt == DType::Bool)
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] &= 1;
  return t;
}

TEST(Safetensors, RoundTripAllDtypesWithMetadata) {
  std::string dir = test::temp_dir("weights_roundtrip");
  TensorMap m;
  const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                       DType::I32, DType::I16, DType::I8,   DType::U8,  DType::Bool};
  int k = 0;
  for (DType dt : all) {
    m[std::string("t.") + dtype_name(dt)] = iota_tensor({3, 1 + k % 4, 5}, dt, 100 + k);
    ++k;
  }
  m["odd_u8"] = iota_tensor({7}, DType::U8, 1);  // makes later tensors misaligned in name order
  m["scalar"] = iota_tensor({}, DType::F32, 2);
  m["zero_sized"] = Tensor::empty({0, 4}, DType::F32);
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}};
  std::string path = dir + "/all.safetensors";
  save_safetensors(path, m, meta);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  Bytes raw = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // header padded to a multiple of 8
  WeightFile wf = load_safetensors(path);
  expect_identical(m, wf.tensors);
  EXPECT_EQ(wf.metadata, meta);
  for (const auto& [name, t] : wf.tensors)
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % dtype_size(t.dtype()), 0u) << name;
  // load_weights detects the format by content.
  expect_identical(m, load_weights(path).tensors);
}

TEST(Safetensors, SaveToUnwritablePathNamesTheFile) {
  std::string path = test::temp_dir("weights_unwritable") + "/no/such/dir/x.safetensors";
  expect_error([&] { save_safetensors(path, {{"a", Tensor::zeros({2})}}); }, path);
}

struct BadCase {
  const char* name;
  Bytes bytes;
  const char* what;  // a fragment the message must contain
};

TEST(Safetensors, RejectsBrokenFilesWithClearErrors) {
  MAMBACV_REQUIRE_FIXTURES();
  std::string dir = test::temp_dir("weights_bad_st");
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const Bytes eight(8, '\0'), sixteen(16, '\0');
  std::vector<BadCase> cases = {
      {"empty", "", "too short"},
      {"short", "abc", "too short"},
      {"garbage", "this is certainly not a weight file at all", "header length"},
      {"len_beyond_file", raw_safetensors("{" + ok_entry + "}", eight, 4096), "past the end"},
      {"len_over_cap", raw_safetensors("{}", "", 200'000'000), "limit"},
      {"not_json", raw_safetensors("{\"a\": [1, 2", eight), "not valid JSON"},
      {"not_object", raw_safetensors("[1, 2, 3]", ""), "JSON object"},
      {"unknown_dtype", raw_safetensors(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", Bytes(2, 0)),
       "F8_E4M3"},
      {"negative_shape", raw_safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       "non-negative"},
      {"huge_shape",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", eight),
       "overflow"},
      {"size_mismatch", raw_safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "needs 12"},
      {"reversed", raw_safetensors(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight), "end before"},
      {"gap",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                       sixteen),
       "gap"},
      {"overlap",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       sixteen),
       "overlaps"},
      {"out_of_range", raw_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight),
       "past the end of the data"},
      {"trailing_bytes", raw_safetensors("{" + ok_entry + "}", sixteen), "trailing"},
      {"missing_field", raw_safetensors(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "data_offsets"},
      {"deep_nesting",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') +
                           R"(,"data_offsets":[0,8]}})",
                       eight),
       "shape"},
      {"bad_metadata", raw_safetensors(R"({"__metadata__":{"k":3},)" + ok_entry + "}", eight), "__metadata__"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = dir + "/" + c.name + ".safetensors";
    write_file(path, c.bytes);
    expect_error([&] { load_safetensors(path); }, path, c.what);
  }
  // Truncations of a real file at many lengths.
  Bytes good = read_file(test::fixture("vim_stride8_mini.weights.safetensors"));
  std::string path = dir + "/truncated.safetensors";
  for (size_t len : {size_t{0}, size_t{5}, size_t{9}, size_t{100}, good.size() / 2, good.size() - 1}) {
    write_file(path, good.substr(0, len));
    expect_error([&] { load_safetensors(path); }, path);
  }
  // A missing file.
  expect_error([&] { load_safetensors(dir + "/missing.safetensors"); }, dir + "/missing.safetensors");
}

// ---- .pth: a tiny zip writer and pickle assembler for building checkpoints by hand ---------------------------

uint32_t crc32_of(const Bytes& b) {
  uint32_t c = 0xffffffffu;
  for (unsigned char ch : b) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return ~c;
}

struct ZipRecord {
  std::string name;
  Bytes data;
  bool deflate = false;  // written as DEFLATE "stored" blocks (valid method-8 data, no compressor needed)
};

Bytes deflate_stored_blocks(const Bytes& d) {
  Bytes out;
  size_t pos = 0;
  do {
    size_t n = std::min<size_t>(d.size() - pos, 65535);
    out.push_back(pos + n == d.size() ? 1 : 0);  // BFINAL, BTYPE=00
    put_le(out, n, 2);
    put_le(out, ~n & 0xffff, 2);
    out += d.substr(pos, n);
    pos += n;
  } while (pos < d.size());
  return out;
}

// With zip64, every size/offset field is saturated and the real values go to ZIP64 records, as writers do for
// archives over 4 GiB.
Bytes make_zip(const std::vector<ZipRecord>& records, bool zip64 = false) {
  const uint64_t sat32 = 0xffffffffu;
  Bytes out, central;
  for (const auto& r : records) {
    Bytes payload = r.deflate ? deflate_stored_blocks(r.data) : r.data;
    uint16_t method = r.deflate ? 8 : 0;
    uint32_t crc = crc32_of(r.data);
    uint64_t offset = out.size();
    Bytes extra;
    if (zip64) {
      put_le(extra, 0x0001, 2);
      put_le(extra, 24, 2);
      put_le(extra, r.data.size(), 8);
      put_le(extra, payload.size(), 8);
      put_le(extra, offset, 8);
    }
    put_le(out, 0x04034b50, 4);
    put_le(out, 20, 2);
    put_le(out, 0, 2);
    put_le(out, method, 2);
    put_le(out, 0, 4);
    put_le(out, crc, 4);
    put_le(out, zip64 ? sat32 : payload.size(), 4);
    put_le(out, zip64 ? sat32 : r.data.size(), 4);
    put_le(out, r.name.size(), 2);
    put_le(out, extra.size(), 2);
    out += r.name + extra + payload;
    put_le(central, 0x02014b50, 4);
    put_le(central, 45, 2);
    put_le(central, 45, 2);
    put_le(central, 0, 2);
    put_le(central, method, 2);
    put_le(central, 0, 4);
    put_le(central, crc, 4);
    put_le(central, zip64 ? sat32 : payload.size(), 4);
    put_le(central, zip64 ? sat32 : r.data.size(), 4);
    put_le(central, r.name.size(), 2);
    put_le(central, extra.size(), 2);
    put_le(central, 0, 2);
    put_le(central, 0, 2);
    put_le(central, 0, 2);
    put_le(central, 0, 4);
    put_le(central, zip64 ? sat32 : offset, 4);
    central += r.name + extra;
  }
  uint64_t cd_offset = out.size();
  out += central;
  if (zip64) {
    uint64_t z64 = out.size();
    put_le(out, 0x06064b50, 4);
    put_le(out, 44, 8);
    put_le(out, 45, 2);
    put_le(out, 45, 2);
    put_le(out, 0, 4);
    put_le(out, 0, 4);
    put_le(out, records.size(), 8);
    put_le(out, records.size(), 8);
    put_le(out, central.size(), 8);
    put_le(out, cd_offset, 8);
    put_le(out, 0x07064b50, 4);
    put_le(out, 0, 4);
    put_le(out, z64, 8);
    put_le(out, 1, 4);
  }
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 4);
  put_le(out, zip64 ? 0xffff : records.size(), 2);
  put_le(out, zip64 ? 0xffff : records.size(), 2);
  put_le(out, zip64 ? sat32 : central.size(), 4);
  put_le(out, zip64 ? sat32 : cd_offset, 4);
  put_le(out, 0, 2);
  return out;
}

// Pickle assembler: protocol-2 opcodes as torch.save emits them.
struct Pickle {
  Bytes b = "\x80\x02";
  Pickle& op(char c) {
    b.push_back(c);
    return *this;
  }
  Pickle& str(const std::string& s) {
    b.push_back('X');
    put_le(b, s.size(), 4);
    b += s;
    return *this;
  }
  Pickle& integer(int32_t v) {
    b.push_back('J');
    put_le(b, static_cast<uint32_t>(v), 4);
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    b += "c" + module + "\n" + name + "\n";
    return *this;
  }
  Pickle& tuple_of(const std::vector<int32_t>& v) {
    op('(');
    for (int32_t x : v) integer(x);
    return op('t');
  }
  // _rebuild_tensor_v2(('storage', <type>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
  Pickle& tensor(const std::string& storage_type, const std::string& key, int32_t numel, int32_t offset,
                 const std::vector<int32_t>& size, const std::vector<int32_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel).op('t').op('Q');
    integer(offset).tuple_of(size).tuple_of(stride).op('\x89');
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  Bytes done() { return b + "."; }
};

Bytes floats(const std::vector<float>& v) { return Bytes(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

// A checkpoint archive "arch/" with the given pickle and storages.
Bytes checkpoint(const Bytes& pkl, std::vector<ZipRecord> storages = {}, bool deflate_pickle = false,
                 bool zip64 = false) {
  std::vector<ZipRecord> r = {{"arch/data.pkl", pkl, deflate_pickle}};
  for (auto& s : storages) r.push_back({"arch/data/" + s.name, s.data, s.deflate});
  r.push_back({"arch/byteorder", "little"});
  r.push_back({"arch/version", "3\n"});
  return make_zip(r, zip64);
}

// ---- .pth tests ---------------------------------------------------------------------------------------------------

TEST(Pth, VimMiniMatchesItsSafetensors) {
  MAMBACV_REQUIRE_FIXTURES();
  WeightFile pth = load_pth(test::fixture("vim_mini.pth"));
  WeightFile st = load_safetensors(test::fixture("vim_mini.weights.safetensors"));
  expect_identical(st.tensors, pth.tensors);  // optimizer state and the args Namespace are skipped
  EXPECT_EQ(pth.metadata.at("source_key"), "model");
  WeightFile auto_detected = load_weights(test::fixture("vim_mini.pth"));
  expect_identical(st.tensors, auto_detected.tensors);
}

TEST(Pth, MmdetCheckpointMatchesItsSafetensors) {
  MAMBACV_REQUIRE_FIXTURES();
  WeightFile pth = load_pth(test::fixture("det/maskrcnn_vmamba_mini.pth"));
  WeightFile st = load_safetensors(test::fixture("det/maskrcnn_vmamba_mini.weights.safetensors"));
  expect_identical(st.tensors, pth.tensors);
  EXPECT_EQ(pth.metadata.at("source_key"), "state_dict");
}

TEST(Pth, StridedViewsDtypesPrefixesAndDeflate) {
  std::string dir = test::temp_dir("weights_pth_handmade");
  // storage "0": 12 floats 0..11; "1": 4 halves; "2": 3 int64.
  std::vector<float> f(12);
  for (int i = 0; i < 12; ++i) f[i] = static_cast<float>(i);
  Bytes halves, longs;
  for (uint16_t h : {0x3c00, 0x4000, 0x4200, 0x4400}) put_le(halves, h, 2);
  for (int64_t v : {int64_t{-5}, int64_t{7}, int64_t{1} << 40}) put_le(longs, static_cast<uint64_t>(v), 8);
  Pickle p;
  p.op('}').op('(').str("epoch").integer(3);
  p.str("model").global("collections", "OrderedDict").op(')').op('R').op('(');
  p.str("module.t").tensor("FloatStorage", "0", 12, 1, {2, 3}, {1, 2});  // transposed view at offset 1
  p.str("module.c").tensor("FloatStorage", "0", 12, 0, {3, 4}, {4, 1});  // contiguous, shares storage 0
  p.str("module.h").tensor("HalfStorage", "1", 4, 0, {4}, {1});
  p.str("module.l").tensor("LongStorage", "2", 3, 2, {}, {});            // a scalar at offset 2
  p.str("module.e").tensor("FloatStorage", "0", 12, 12, {0, 5}, {5, 1});  // empty
  p.str("module.b").tensor("FloatStorage", "0", 12, 3, {2, 2}, {0, 1});  // broadcast row
  p.str("note").str("not a tensor");
  p.op('u').op('u');
  std::string path = dir + "/ok.pth";
  const Bytes program = p.done();
  write_file(path, checkpoint(program, {{"0", floats(f), true}, {"1", halves}, {"2", longs}}, true));
  WeightFile wf = load_pth(path);
  EXPECT_EQ(wf.metadata.at("source_key"), "model");
  EXPECT_EQ(wf.metadata.at("skipped"), "note");
  ASSERT_EQ(wf.tensors.size(), 6u);
  const Tensor& t = wf.tensors.at("t");
  ASSERT_EQ(t.shape(), (Shape{2, 3}));
  // element (i, j) = storage[1 + i + 2j]
  std::vector<float> want_t = {1, 3, 5, 2, 4, 6};
  for (int k = 0; k < 6; ++k) EXPECT_EQ(t.f32()[k], want_t[k]);
  const Tensor& c = wf.tensors.at("c");
  for (int k = 0; k < 12; ++k) EXPECT_EQ(c.f32()[k], f[k]);
  EXPECT_EQ(wf.tensors.at("h").dtype(), DType::F16);
  EXPECT_EQ(f16_to_f32(wf.tensors.at("h").data<f16_t>()[3].bits), 4.0f);
  EXPECT_EQ(wf.tensors.at("l").shape(), Shape{});
  EXPECT_EQ(wf.tensors.at("l").data<int64_t>()[0], 1LL << 40);
  EXPECT_EQ(wf.tensors.at("e").numel(), 0);
  std::vector<float> want_b = {3, 4, 3, 4};
  for (int k = 0; k < 4; ++k) EXPECT_EQ(wf.tensors.at("b").f32()[k], want_b[k]);
  EXPECT_FALSE(t.shares_storage_with(c));  // owned copies

  // The same archive with ZIP64 records throughout.
  write_file(path, checkpoint(program, {{"0", floats(f)}, {"1", halves}, {"2", longs}}, false, true));
  expect_identical(wf.tensors, load_pth(path).tensors);

  // Top-level dict of tensors, and "model_ema" when neither "model" nor "state_dict" holds tensors.
  Pickle top;
  top.op('}').op('(').str("w").tensor("FloatStorage", "0", 12, 0, {12}, {1}).op('u');
  write_file(path, checkpoint(top.done(), {{"0", floats(f)}}));
  wf = load_weights(path);
  EXPECT_EQ(wf.metadata.at("source_key"), "");
  EXPECT_EQ(wf.tensors.at("w").numel(), 12);
  Pickle ema;
  ema.op('}').op('(').str("model").op('}').str("model_ema").op('}').op('(');
  ema.str("module.w").tensor("FloatStorage", "0", 12, 0, {12}, {1}).op('u').op('u');
  write_file(path, checkpoint(ema.done(), {{"0", floats(f)}}));
  wf = load_pth(path);
  EXPECT_EQ(wf.metadata.at("source_key"), "model_ema");
  EXPECT_TRUE(wf.tensors.count("w"));
}

TEST(Pth, CheckpointWithoutWeightsListsItsKeys) {
  std::string path = test::temp_dir("weights_pth_noweights") + "/args_only.pth";
  Pickle p;
  p.op('}').op('(').str("epoch").integer(12).str("args").global("argparse", "Namespace").op(')').op('\x81');
  p.op('}').str("lr").integer(1).op('s').op('b').op('u');
  write_file(path, checkpoint(p.done()));
  expect_error([&] { load_pth(path); }, path, "epoch");
  expect_error([&] { load_weights(path); }, path, "argparse.Namespace");
  // A zip that is not a checkpoint at all.
  write_file(path, make_zip({{"readme.txt", "hello"}}));
  expect_error([&] { load_weights(path); }, path, "data.pkl");
}

TEST(Pth, ForeignGlobalsNeverExecute) {
  std::string dir = test::temp_dir("weights_pth_globals");
  std::string marker = dir + "/pwned";
  std::vector<float> f = {1, 2, 3};
  for (auto [module, name] : {std::pair<std::string, std::string>{"os", "system"}, {"posix", "system"},
                              {"builtins", "eval"}, {"subprocess", "call"}}) {
    SCOPED_TRACE(module + "." + name);
    // {'model': os.system('touch marker'), 'state_dict': {'w': tensor}}: the call becomes an opaque value.
    Pickle p;
    p.op('}').op('(').str("model").global(module, name).op('(').str("touch " + marker).op('t').op('R');
    p.str("state_dict").op('}').op('(').str("w").tensor("FloatStorage", "0", 3, 0, {3}, {1}).op('u').op('u');
    std::string path = dir + "/evil_" + name + ".pth";
    write_file(path, checkpoint(p.done(), {{"0", floats(f)}}));
    WeightFile wf = load_pth(path);
    EXPECT_EQ(wf.metadata.at("source_key"), "state_dict");
    EXPECT_EQ(wf.tensors.size(), 1u);
    // Only the call: no weights, an Error that lists the opaque value.
    Pickle q;
    q.global(module, name).op('(').str("touch " + marker).op('t').op('R').op('0');
    q.op('}').str("model").global(module, name).op('(').str("touch " + marker).op('t').op('R').op('s');
    write_file(path, checkpoint(q.done()));
    expect_error([&] { load_pth(path); }, path, module + "." + name);
  }
  EXPECT_FALSE(std::filesystem::exists(marker));
}

TEST(Pth, HostileOrBrokenPicklesGiveCleanErrors) {
  std::string dir = test::temp_dir("weights_pth_hostile");
  std::vector<float> f = {1, 2, 3, 4};
  auto with_tensor = [](const std::string& type, int32_t numel, int32_t offset, std::vector<int32_t> size,
                        std::vector<int32_t> stride) {
    Pickle p;
    p.op('}').op('(').str("w").tensor(type, "0", numel, offset, size, stride).op('u');
    return p.done();
  };
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"inst_opcode", Bytes("\x80\x02" "ios\nsystem\n(S'x'\n" "t.", 21)},
      {"ext1_opcode", Bytes("\x80\x02\x82\x01.", 5)},
      {"text_get", Bytes("\x80\x02g0\n.", 6)},
      {"no_stop", Bytes("\x80\x02}(", 4)},
      {"empty_pickle", Bytes()},
      {"stack_underflow", Bytes("\x80\x02s.", 4)},
      {"pop_empty", Bytes("\x80\x02" "0.", 4)},
      {"missing_memo", Bytes("\x80\x02h\x07.", 5)},
      {"string_past_end", Bytes("\x80\x02X\xff\xff\xff\x7f" "abc.", 11)},
      {"bytes8_huge", Bytes("\x80\x02\x8e\xff\xff\xff\xff\xff\xff\xff\xff.", 12)},
      {"proto_99", Bytes("\x80\x63}.", 4)},
      {"reduce_on_int", Pickle().integer(1).op(')').op('R').done()},
      {"setitems_odd", Pickle().op('}').op('(').integer(1).op('u').done()},
      {"deep_marks", Pickle().b + Bytes(100000, '(') + "."},
      {"view_beyond_storage", with_tensor("FloatStorage", 4, 2, {2, 2}, {2, 1})},
      {"storage_bigger_than_record", with_tensor("FloatStorage", 400, 0, {400}, {1})},
      {"negative_stride", with_tensor("FloatStorage", 4, 0, {2}, {-1})},
      {"negative_size", with_tensor("FloatStorage", 4, 0, {-2}, {1})},
      {"size_overflow", with_tensor("FloatStorage", 4, 0, {65536, 65536, 65536, 65536}, {0, 0, 0, 0})},
      {"rank_mismatch", with_tensor("FloatStorage", 4, 0, {2, 2}, {1})},
      {"unsupported_storage", with_tensor("ComplexFloatStorage", 4, 0, {4}, {1})},
      {"missing_storage_record", [] {
         Pickle p;
         p.op('}').op('(').str("w").tensor("FloatStorage", "7", 4, 0, {4}, {1}).op('u');
         return p.done();
       }()},
      {"bad_persistent_id", Pickle().str("hello").op('Q').done()},
  };
  for (const auto& [name, pkl] : cases) {
    SCOPED_TRACE(name);
    std::string path = dir + "/" + name + ".pth";
    write_file(path, checkpoint(pkl, {{"0", floats(f)}}));
    expect_error([&] { load_pth(path); }, path);
  }
  // A corrupted record: CRC mismatch.
  Bytes z = checkpoint(with_tensor("FloatStorage", 4, 0, {4}, {1}), {{"0", floats(f)}});
  size_t at = z.find(floats(f));
  ASSERT_NE(at, Bytes::npos);
  z[at] ^= 0x40;
  std::string path = dir + "/crc.pth";
  write_file(path, z);
  expect_error([&] { load_pth(path); }, path, "CRC");
  PthOptions no_crc;
  no_crc.verify_checksums = false;
  EXPECT_EQ(load_pth(path, no_crc).tensors.size(), 1u);
}

// A memoised list of 1000 pairs rebuilt into an OrderedDict 3000 times (7 bytes of pickle per rebuild, 3 million
// entries copied): refused by the copy budget (4 entries per input byte) at once, not hours of work. A pickle
// record larger than 64 MiB uncompressed is refused before it is inflated.
TEST(Pth, PickleBombsAreRefused) {
  std::string dir = test::temp_dir("weights_pth_bomb");
  Bytes p = "\x80\x02" "ccollections\nOrderedDict\n";
  p += Bytes("q\x00", 2);  // memo 0: the OrderedDict global
  p += "]q\x01(";           // memo 1: a list, then its items

  for (int i = 0; i < 1000; ++i) p += Bytes("\x8c\x01" "aK\x01\x86", 6);
  p += Bytes("e0", 2);
  for (int i = 0; i < 3000; ++i) p += Bytes("h\x00h\x01\x85R0", 7);
  p += Bytes("}.", 2);
  const std::string path = dir + "/bomb.pth";
  write_file(path, checkpoint(p, {}));
  const auto t0 = std::chrono::steady_clock::now();
  expect_error([&] { load_pth(path); }, path, "pickle bomb");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  // the same rebuild a few times is an ordinary pickle: no bomb error (it fails later, holding no weights)
  Bytes q = p.substr(0, p.size() - 3000 * 7 - 2);
  for (int i = 0; i < 3; ++i) q += Bytes("h\x00h\x01\x85R0", 7);
  q += Bytes("}.", 2);
  write_file(path, checkpoint(q, {}));
  try {
    load_pth(path);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("pickle bomb"), std::string::npos) << e.what();
  }
  // 65 MiB of NONE opcodes deflate to a small record
  Bytes big = "\x80\x02" + Bytes(size_t{65} << 20, 'N') + ".";
  write_file(path, checkpoint(big, {}, /*deflate_pickle=*/true));
  expect_error([&] { load_pth(path); }, path, "uncompressed");
}

TEST(Pth, TruncatedCheckpointsGiveCleanErrors) {
  MAMBACV_REQUIRE_FIXTURES();
  Bytes good = read_file(test::fixture("vim_mini.pth"));
  std::string path = test::temp_dir("weights_pth_truncated") + "/t.pth";
  for (size_t len : {size_t{4}, size_t{30}, size_t{100}, size_t{5000}, good.size() / 2, good.size() - 23,
                     good.size() - 1}) {
    SCOPED_TRACE(len);
    write_file(path, good.substr(0, len));
    expect_error([&] { load_weights(path); }, path);
  }
}

// Random byte flips in the real checkpoint never crash or hang: the load either succeeds or throws Error.
TEST(Pth, RandomCorruptionsNeverCrash) {
  MAMBACV_REQUIRE_FIXTURES();
  const Bytes good = read_file(test::fixture("vim_mini.pth"));
  const std::string path = test::temp_dir("weights_pth_fuzz") + "/fuzz.pth";
  std::mt19937_64 rng(1234);
  PthOptions no_crc;
  no_crc.verify_checksums = false;
  int loaded = 0, errors = 0;
  for (int iter = 0; iter < 600; ++iter) {
    Bytes b = good;
    // Half the runs aim at the pickle (the first ~8 KB) with checksums off so the interpreter sees the damage.
    const bool aim_pickle = iter % 2 == 0;
    const size_t span = aim_pickle ? 8300 : b.size();
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < flips; ++k) b[rng() % span] = static_cast<char>(rng());
    if (iter % 50 == 49) b.resize(rng() % b.size());
    write_file(path, b);
    try {
      WeightFile wf = aim_pickle ? load_pth(path, no_crc) : load_weights(path);
      ++loaded;
    } catch (const Error& e) {
      ++errors;
      ASSERT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-mambacv exception " << e.what();
    }
  }
  EXPECT_GT(errors, 0);
  RecordProperty("loaded", loaded);
  std::printf("fuzz: %d loaded, %d rejected\n", loaded, errors);
}

// ---- format detection and strict matching -----------------------------------------------------------------------

TEST(LoadWeights, RejectsUnknownAndMissingFiles) {
  std::string dir = test::temp_dir("weights_detect");
  std::string path = dir + "/random.bin";
  write_file(path, Bytes("\x13\x37garbage bytes here", 19));
  expect_error([&] { load_weights(path); }, path, "not a weight file");
  write_file(path, Bytes("\x80\x02}q\x00.", 6));
  expect_error([&] { load_weights(path); }, path, "legacy");
  expect_error([&] { load_weights(dir + "/absent.pth"); }, dir + "/absent.pth");
  expect_error([&] { load_weights(dir); }, dir);
}

TEST(CheckWeightsMatch, ListsEveryProblemAtOnce) {
  TensorMap w = {{"a.weight", Tensor::zeros({4, 3})},
                 {"b.weight", Tensor::zeros({5})},
                 {"c.index", Tensor::zeros({2}, DType::I64)},
                 {"extra.bias", Tensor::zeros({7})}};
  std::vector<ParamSpec> want = {{"a.weight", {4, 3}}, {"b.weight", {6}}, {"c.index", {2}}, {"d.weight", {8, 8}}};
  try {
    check_weights_match(w, want, "ckpt.pth");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("ckpt.pth", 0), 0u) << msg;
    for (const char* s : {"d.weight", "(8, 8)", "extra.bias", "b.weight", "(6)", "f32(5)", "c.index", "i64(2)"})
      EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in: " << msg;
    EXPECT_EQ(msg.find("a.weight"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(check_weights_match({{"a.weight", Tensor::zeros({4, 3})}}, {{"a.weight", {4, 3}}}, "x"));
}

}  // namespace
}  // namespace mambacv
