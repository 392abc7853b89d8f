// mambacv_fuzz_seeds OUT_DIR CONFIG.json...: writes the fuzzers' seed corpora, made here rather than taken from
// anywhere: OUT_DIR/safetensors (small files of every float dtype, with metadata), OUT_DIR/pth (a torch.save-style
// zip with a pickled state dict, stored and checked to load), OUT_DIR/config (the given config files) and
// OUT_DIR/image (PNG, JPEG, BMP, gray and odd sizes).
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "mambacv/image.h"
#include "mambacv/weights.h"

using namespace mambacv;
namespace fs = std::filesystem;

namespace {

void put_le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A zip archive of stored (uncompressed) records.
std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& records) {
  std::string out, central;
  for (const auto& [name, data] : records) {
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    const size_t offset = out.size();
    std::string fields;  // version, flags, method, time, date, crc, sizes, name length, extra length
    put_le(fields, 20, 2), put_le(fields, 0, 2), put_le(fields, 0, 2), put_le(fields, 0, 2), put_le(fields, 0, 2);
    put_le(fields, crc, 4), put_le(fields, data.size(), 4), put_le(fields, data.size(), 4);
    put_le(fields, name.size(), 2), put_le(fields, 0, 2);
    put_le(out, 0x04034b50, 4);
    out += fields + name + data;
    put_le(central, 0x02014b50, 4);
    put_le(central, 20, 2);
    central += fields;
    put_le(central, 0, 2), put_le(central, 0, 2), put_le(central, 0, 2), put_le(central, 0, 4);
    put_le(central, offset, 4);
    central += name;
  }
  const size_t cd_offset = out.size();
  out += central;
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 2), put_le(out, 0, 2), put_le(out, records.size(), 2), put_le(out, records.size(), 2);
  put_le(out, central.size(), 4), put_le(out, cd_offset, 4), put_le(out, 0, 2);
  return out;
}

std::string pickle_str(const std::string& s) {
  std::string out = "X";
  put_le(out, s.size(), 4);
  return out + s;
}

// {name: torch tensor of `n` floats at storage key `key`} as torch.save pickles it (protocol 2).
std::string state_dict_pickle(const std::vector<std::pair<std::string, std::string>>& tensors, int n) {
  std::string p = "\x80\x02}(";
  for (const auto& [name, key] : tensors) {
    p += pickle_str(name);
    p += "ctorch._utils\n_rebuild_tensor_v2\n((";
    p += pickle_str("storage") + "ctorch\nFloatStorage\n" + pickle_str(key) + pickle_str("cpu");
    p += "K" + std::string(1, static_cast<char>(n)) + "tQ";                     // persistent id -> storage
    p += std::string("K\x00", 2) + "K" + std::string(1, static_cast<char>(n)) + "\x85";  // offset 0, size (n,)
    p += std::string("K\x01\x85\x89", 4);                                         // stride (1,), requires_grad
    p += "ccollections\nOrderedDict\n)RtR";                                       // hooks; rebuild
  }
  return p + "u.";
}

void write(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: mambacv_fuzz_seeds OUT_DIR [CONFIG.json ...]\n");
    return 2;
  }
  try {
    const fs::path out = argv[1];
    for (const char* d : {"safetensors", "pth", "config", "image"}) fs::create_directories(out / d);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-2, 2);
    // safetensors
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      TensorMap m;
      Tensor a = Tensor::empty({2, 3}), b = Tensor::empty({4});
      for (int64_t i = 0; i < a.numel(); ++i) a.f32()[i] = u(rng);
      for (int64_t i = 0; i < b.numel(); ++i) b.f32()[i] = u(rng);
      m["layers.0.weight"] = a.to(dt);
      m["norm.bias"] = b.to(dt);
      const fs::path p = out / "safetensors" / (std::string("seed_") + dtype_name(dt) + ".safetensors");
      save_safetensors(p.string(), m, {{"format", "pt"}});
      load_safetensors(p.string());
    }
    // .pth: two tensors on two storages
    std::string s0(16, '\0'), s1(16, '\0');
    for (int i = 0; i < 4; ++i) {
      const float v = u(rng), w = u(rng);
      std::memcpy(&s0[4 * i], &v, 4);
      std::memcpy(&s1[4 * i], &w, 4);
    }
    const std::string pkl = state_dict_pickle({{"head.weight", "0"}, {"head.bias", "1"}}, 4);
    const fs::path pth = out / "pth" / "seed_state_dict.pth";
    write(pth, stored_zip({{"archive/data.pkl", pkl}, {"archive/data/0", s0}, {"archive/data/1", s1},
                           {"archive/byteorder", "little"}, {"archive/version", "3\n"}}));
    const WeightFile w = load_pth(pth.string());
    if (w.tensors.size() != 2) throw Error("seed .pth: expected 2 tensors");
    // configs
    for (int i = 2; i < argc; ++i) fs::copy_file(argv[i], out / "config" / fs::path(argv[i]).filename(),
                                                 fs::copy_options::overwrite_existing);
    // images
    for (auto [wd, ht] : {std::pair<int, int>{7, 5}, {32, 24}, {1, 9}}) {
      Image img;
      img.width = wd;
      img.height = ht;
      img.rgb.resize(static_cast<size_t>(wd) * ht * 3);
      for (auto& v : img.rgb) v = static_cast<uint8_t>(rng());
      for (const char* ext : {".png", ".jpg", ".bmp"})
        save_image((out / "image" / ("seed_" + std::to_string(wd) + "x" + std::to_string(ht) + ext)).string(), img);
    }
    std::printf("seeds written to %s\n", out.string().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv_fuzz_seeds: %s\n", e.what());
    return 1;
  }
}
