// mambacv_demo_retrieval - image retrieval by pooled backbone features, using only the public mambacv API.
//
//   mambacv_demo_retrieval --model vmamba_tiny_s1l8 --weights vssm1_tiny.pth --index photos/ [--query q.jpg ...]
//
// Every image under --index (recursively) is embedded once: the last stage's feature map averaged over space
// (VMamba "stage.3", detection backbones "features.3") or Vim's class token "cls", then L2-normalised, so the
// dot product of two embeddings is their cosine similarity. Each query (a file, or every image of a folder)
// prints its --topk nearest indexed images. Without --query every indexed image is a query against the others.
// Images that cannot be read are reported on stderr and skipped; the exit status is 1 when any failed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <mambacv/mambacv.h>

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: mambacv_demo_retrieval --model M --weights W --index DIR [--query FILE|DIR ...] [--topk K]\n"
    "                              [--batch N] [--threads N] [--json]\n"
    "  --model    a shipped config name (e.g. vim_tiny, vmamba_tiny_s1l8) or a config .json\n"
    "  --weights  the checkpoint (.pth or .safetensors)\n"
    "  --index    folder of images to search (recursive)\n"
    "  --query    query image or folder (repeatable); default: every indexed image against the others\n"
    "  --topk     neighbours per query (default 5)\n"
    "  --json     one JSON object per query: {\"query\": P, \"neighbors\": [{\"image\": P, \"similarity\": S}]}\n";

struct Args {
  std::string model, weights, index;
  std::vector<std::string> queries;
  int topk = 5, batch = 8, threads = 0;
  bool json = false;
};

int parse_int(const std::string& opt, const std::string& v, int min) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < min || x > 1000000)
    throw mambacv::Error(opt + ": expected an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return static_cast<int>(x);
}

// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string opt = argv[i], val;
    if (opt == "--help" || opt == "-h") return false;
    if (opt == "--json") {
      a.json = true;
      continue;
    }
    const size_t eq = opt.find('=');
    if (opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt = opt.substr(0, eq);
    } else {
      if (opt.rfind("--", 0) != 0) throw mambacv::Error("unexpected argument '" + opt + "' (see --help)");
      if (i + 1 >= argc) throw mambacv::Error(opt + ": missing value");
      val = argv[++i];
    }
    if (opt == "--model")
      a.model = val;
    else if (opt == "--weights")
      a.weights = val;
    else if (opt == "--index")
      a.index = val;
    else if (opt == "--query")
      a.queries.push_back(val);
    else if (opt == "--topk")
      a.topk = parse_int(opt, val, 1);
    else if (opt == "--batch")
      a.batch = parse_int(opt, val, 1);
    else if (opt == "--threads")
      a.threads = parse_int(opt, val, 0);
    else
      throw mambacv::Error("unknown option '" + opt + "' (see --help)");
  }
  if (a.model.empty()) throw mambacv::Error("--model is required (a config name or .json)");
  if (a.weights.empty()) throw mambacv::Error("--weights is required (.pth or .safetensors)");
  if (a.index.empty()) throw mambacv::Error("--index DIR is required");
  return true;
}

bool is_image_file(const fs::path& p) {
  static const std::set<std::string> kExt = {".png", ".jpg",  ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
                                             ".ppm", ".pgm",  ".pbm",  ".pnm", ".jp2", ".sr",   ".ras"};
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return kExt.count(e) > 0;
}

// A folder -> its image files (recursive, sorted); a file -> itself.
std::vector<std::string> list_images(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (!fs::exists(path, ec)) throw mambacv::Error(path + ": no such file or folder");
    return {path};
  }
  std::vector<std::string> out;
  for (fs::recursive_directory_iterator it(path, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec) && is_image_file(it->path())) out.push_back(it->path().string());
  if (ec) throw mambacv::Error(path + ": cannot list the folder (" + ec.message() + ")");
  std::sort(out.begin(), out.end());
  return out;
}

// The name of the embedding feature: Vim "cls", else the deepest "stage.i" / "features.i" map.
std::string embedding_feature(const std::map<std::string, mambacv::Tensor>& f) {
  if (f.count("cls")) return "cls";
  for (const char* prefix : {"stage.", "features."}) {
    std::string best;
    int best_i = -1;
    for (const auto& kv : f) {
      if (kv.first.rfind(prefix, 0) != 0) continue;
      const std::string rest = kv.first.substr(std::strlen(prefix));
      if (rest.empty() || rest.find_first_not_of("0123456789") != std::string::npos) continue;
      const int i = std::atoi(rest.c_str());
      if (i > best_i) best_i = i, best = kv.first;
    }
    if (best_i >= 0) return best;
  }
  std::string names;
  for (const auto& kv : f) names += " " + kv.first;
  throw mambacv::Error("the model's features hold no \"cls\", \"stage.i\" or \"features.i\" (has:" + names + ")");
}

// Row b of a (B, D) vector or (B, C, H, W) map -> its global average (D or C values), L2-normalised.
std::vector<float> embed_row(const mambacv::Tensor& t, int64_t b) {
  const mambacv::Tensor f = t.to(mambacv::DType::F32);
  const int64_t C = f.dim(1), hw = f.ndim() == 4 ? f.dim(2) * f.dim(3) : 1;
  const float* p = f.f32() + b * C * hw;
  std::vector<double> v(static_cast<size_t>(C), 0.0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < hw; ++i) v[c] += p[c * hw + i];
  double norm = 0;
  for (double& x : v) {
    x /= static_cast<double>(hw);
    norm += x * x;
  }
  norm = std::sqrt(norm);
  std::vector<float> out(v.size());
  for (size_t c = 0; c < v.size(); ++c) out[c] = static_cast<float>(norm > 0 ? v[c] / norm : 0.0);
  return out;
}

struct Embedded {
  std::vector<std::string> paths;
  std::vector<std::vector<float>> vectors;  // same order as paths
  int failed = 0;
};

Embedded embed_all(const mambacv::Model& model, const std::vector<std::string>& paths, int batch) {
  Embedded out;
  const mambacv::InputSpec spec = model.input_spec();
  for (size_t start = 0; start < paths.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(paths.size(), start + static_cast<size_t>(batch));
    std::vector<mambacv::Tensor> inputs;
    std::vector<std::string> ok;
    for (size_t i = start; i < end; ++i) {
      try {
        inputs.push_back(mambacv::preprocess(mambacv::load_image(paths[i]), spec));
        ok.push_back(paths[i]);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "skipped %s: %s\n", paths[i].c_str(), e.what());
        ++out.failed;
      }
    }
    if (inputs.empty()) continue;
    const auto features = model.features(mambacv::stack_batch(inputs));
    const mambacv::Tensor& f = features.at(embedding_feature(features));
    for (size_t k = 0; k < ok.size(); ++k) {
      out.paths.push_back(ok[k]);
      out.vectors.push_back(embed_row(f, static_cast<int64_t>(k)));
    }
  }
  return out;
}

float dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(s);
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

void print_neighbours(const std::string& query, const std::vector<std::pair<float, size_t>>& hits,
                      const Embedded& index, bool json) {
  if (json) {
    std::string line = "{\"query\": " + json_string(query) + ", \"neighbors\": [";
    for (size_t r = 0; r < hits.size(); ++r) {
      char sim[32];
      std::snprintf(sim, sizeof sim, "%.6f", hits[r].first);
      line += (r ? ", " : "") + std::string("{\"image\": ") + json_string(index.paths[hits[r].second]) +
              ", \"similarity\": " + sim + "}";
    }
    std::printf("%s]}\n", line.c_str());
  } else {
    std::printf("%s\n", query.c_str());
    for (size_t r = 0; r < hits.size(); ++r)
      std::printf("  %zu. %.4f  %s\n", r + 1, hits[r].first, index.paths[hits[r].second].c_str());
  }
}

int run(const Args& args) {
  mambacv::Options opt;
  opt.threads = args.threads;
  const mambacv::Model model = mambacv::Model::load(args.model, args.weights, opt);

  const std::vector<std::string> index_paths = list_images(args.index);
  if (index_paths.empty()) throw mambacv::Error(args.index + ": no image files found");
  const Embedded index = embed_all(model, index_paths, args.batch);
  if (index.paths.empty()) throw mambacv::Error(args.index + ": none of the images could be read");
  std::fprintf(stderr, "indexed %zu image(s) from %s (%zu-d embeddings)\n", index.paths.size(), args.index.c_str(),
               index.vectors[0].size());

  int failed = index.failed;
  const bool self = args.queries.empty();  // every indexed image against the others
  Embedded queries;
  if (!self) {
    std::vector<std::string> qpaths;
    for (const auto& q : args.queries) {
      try {
        for (auto& p : list_images(q)) qpaths.push_back(std::move(p));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "skipped %s: %s\n", q.c_str(), e.what());
        ++failed;
      }
    }
    queries = embed_all(model, qpaths, args.batch);
    failed += queries.failed;
  }
  const Embedded& q = self ? index : queries;
  for (size_t i = 0; i < q.paths.size(); ++i) {
    std::vector<std::pair<float, size_t>> hits;
    for (size_t j = 0; j < index.paths.size(); ++j)
      if (!(self && j == i)) hits.emplace_back(dot(q.vectors[i], index.vectors[j]), j);
    const size_t k = std::min(hits.size(), static_cast<size_t>(args.topk));
    std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(k), hits.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    hits.resize(k);
    print_neighbours(q.paths[i], hits, index, args.json);
  }
  std::fflush(stdout);
  if (failed) std::fprintf(stderr, "%d image(s) could not be read and were skipped\n", failed);
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args;
    if (!parse_args(argc, argv, args)) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv_demo_retrieval: error: %s\n", e.what());
    return 2;
  }
}
