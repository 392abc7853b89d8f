// mambacv convert: a checkpoint turned into safetensors once - the model's tensors only, under their canonical
// names, optionally rounded to f16 / bf16 - so later loads are memory-mapped and need no unpickling.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tools/args.h"
#include "tools/commands.h"

namespace mambacv::cli {

namespace {
namespace fs = std::filesystem;
const char* kConvertHelp =
    "usage: mambacv convert --model M IN.pth|IN.safetensors OUT.safetensors [--dtype f32|f16|bf16]\n"
    "Reads IN (a released .pth checkpoint or any safetensors file), keeps the tensors the model M uses under\n"
    "their canonical names (upstream's alternative spellings and layouts are renamed / reshaped; anything else,\n"
    "e.g. optimizer state, is left out), and writes them to OUT as safetensors: in the file's own float types, or\n"
    "rounded to --dtype (round to nearest even). The metadata records the model, the source file and the dtype.\n"
    "IN must match M exactly (the same check as a load: every missing or misshapen tensor is listed).\n";
}  // namespace

int cmd_convert(const std::vector<std::string>& argv) {
  Args args("convert", argv, {"model", "dtype"}, {"help"});
  if (args.has("help")) {
    std::fputs(kConvertHelp, stdout);
    return 0;
  }
  args.require("model", "--model is required (the config the checkpoint belongs to)");
  MAMBACV_USAGE_CHECK(args.positionals().size() == 2,
                      "convert: expected IN and OUT.safetensors, got " << args.positionals().size() << " arguments");
  const std::string in = args.positionals()[0], out = args.positionals()[1];
  MAMBACV_USAGE_CHECK(fs::path(out).extension() == ".safetensors",
                      "convert: OUT must end in .safetensors, got " << out);
  DType dtype = DType::F32;
  const bool round = args.has("dtype");
  if (round) {
    try {
      dtype = parse_compute_dtype(args.get("dtype"));
    } catch (const Error& e) {
      throw UsageError(e.what());
    }
  }
  std::error_code ec;
  MAMBACV_CHECK(!fs::exists(out, ec) || fs::weakly_canonical(in, ec) != fs::weakly_canonical(out, ec),
                "convert: OUT " << out << " is the input file");
  {  // a writable OUT is checked before the work (and not left behind when it was not there)
    const bool existed = fs::exists(out, ec);
    const bool writable = std::ofstream(out, std::ios::binary | std::ios::app).good();
    if (!existed) fs::remove(out, ec);
    MAMBACV_CHECK(writable, "convert: cannot write " << out);
  }
  const ModelConfig cfg = load_model_config(args.get("model"));
  const WeightFile wf = load_weights(in);
  TensorMap w = canonical_weights(cfg, wf.tensors, wf.path);
  int64_t values = 0;
  for (auto& [name, t] : w) {
    if (round && t.dtype() != dtype) t = t.to(dtype, /*copy=*/true);
    values += t.numel();
  }
  std::map<std::string, std::string> meta = {{"format", "pt"},
                                             {"mambacv_model", cfg.name},
                                             {"source", fs::path(in).filename().string()},
                                             {"dtype", round ? dtype_name(dtype) : "as in the source"}};
  save_safetensors(out, w, meta);
  std::printf("%s: %zu tensors, %lld values (%s) from %s\n", out.c_str(), w.size(), static_cast<long long>(values),
              round ? dtype_name(dtype) : "source dtypes", in.c_str());
  return 0;
}

}  // namespace mambacv::cli
