// mambacv - the command line: one binary, subcommands.
// Exit status: 0 success; 1 a runtime failure (a file that cannot be read, an image that failed, a check that did
// not pass); 2 a usage error (unknown command or option, missing argument, malformed value).
#include <cstdio>
#include <cstring>
#include <exception>
#include <set>
#include <string>
#include <vector>

#include "tools/args.h"
#include "tools/commands.h"

namespace {
void usage(FILE* f) {
  std::fprintf(f,
               "usage: mambacv [--version] [GLOBAL OPTIONS] <command> [options]\n"
               "commands:\n"
               "  models                the shipped model configs, their checkpoints and where to get them\n"
               "  classify INPUT...     top-k classes of images (files, folders, @list.txt, - for a list on stdin)\n"
               "  features INPUT... -o F per-image feature maps or pooled vectors into a safetensors file\n"
               "  detect INPUT...       instance detection + masks (Mask R-CNN): boxes, labels, scores, COCO RLE\n"
               "  bench                 latency / throughput beside the machine's measured FMA peak and GEMM rate\n"
               "  convert --model M IN OUT.safetensors  a checkpoint as safetensors (model tensors only, --dtype)\n"
               "  serve --model M ...   models behind the Open Inference Protocol (KServe v2) over HTTP\n"
               "  info                  what a model is: task, parameters, FLOPs, output shapes; checks a weights file\n"
               "  verify FIXTURE.json   run a golden fixture and compare every tensor the model produces\n"
               "  check-cores --model M run both scan cores on one input: differences between them and to f32\n"
               "global options (also accepted before the command): --model M --weights W --device cpu|cuda\n"
               "  --dtype f32|f16|bf16 --core v0|v1 --threads N --json --check-finite\n"
               "run 'mambacv <command> --help' (or -h) for the options of a command\n"
               "exit status: 0 success, 1 runtime failure (unreadable file, failed image, failed check), 2 usage error\n");
}

void version() {
  std::printf("mambacv %s (CUDA kernels %s)\n", MAMBACV_VERSION_STRING,
              mambacv::cuda_built() ? "built" : "not built");
}

// Options given before the command; they are handed to the command as if written after it.
const std::set<std::string> kGlobalValued = {"model", "weights", "device", "dtype", "core", "threads"};
const std::set<std::string> kGlobalFlags = {"json", "check-finite"};
}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  std::vector<std::string> globals;
  size_t i = 0;
  std::string cmd;
  try {
    for (; i < all.size(); ++i) {
      const std::string& a = all[i];
      if (a == "--help" || a == "-h") {
        usage(stdout);
        return 0;
      }
      if (a == "--version") {
        version();
        return 0;
      }
      if (a.rfind("--", 0) != 0) break;
      std::string key = a.substr(2);
      const size_t eq = key.find('=');
      if (eq != std::string::npos) key = key.substr(0, eq);
      if (kGlobalValued.count(key)) {
        globals.push_back(a);
        if (eq == std::string::npos) {
          MAMBACV_USAGE_CHECK(i + 1 < all.size(), "option --" << key << " needs a value");
          globals.push_back(all[++i]);
        }
      } else if (kGlobalFlags.count(key)) {
        globals.push_back(a);
      } else {
        MAMBACV_USAGE_CHECK(false, "'" << a << "' is not a global option; options other than --model --weights "
                                       "--device --dtype --core --threads --json --check-finite go after the command");
      }
    }
    if (i == all.size()) {
      usage(stderr);
      return 2;
    }
    cmd = all[i];
    std::vector<std::string> args(all.begin() + static_cast<std::ptrdiff_t>(i) + 1, all.end());
    args.insert(args.end(), globals.begin(), globals.end());
    for (const auto& c : mambacv::cli::commands())
      if (cmd == c.name) return c.run(args);
    std::fprintf(stderr, "mambacv: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const mambacv::cli::UsageError& e) {
    std::fprintf(stderr, "mambacv%s%s: usage error: %s (see 'mambacv %s--help')\n", cmd.empty() ? "" : " ",
                 cmd.c_str(), e.what(), cmd.empty() ? "" : (cmd + " ").c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
