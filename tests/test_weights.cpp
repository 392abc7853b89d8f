// Weight files: safetensors read/write and validation, PyTorch .pth checkpoints (zip + pickle), strict matching.
#include <gtest/gtest.h>

#include <cstdint>
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

}  // namespace
}  // namespace mambacv
