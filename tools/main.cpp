// mambacv - the command line: one binary, subcommands.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "tools/commands.h"

namespace {
void usage(FILE* f) {
  std::fprintf(f,
               "usage: mambacv <command> [options]\n"
               "commands:\n"
               "  verify FIXTURE.json   run a golden fixture and compare every tensor the model produces\n"
               "  check-cores --model M run both scan cores on one input: differences between them and to f32\n"
               "  classify INPUT...     top-k classes of images (files, folders, @list.txt)\n"
               "  features INPUT... -o F per-image feature maps or pooled vectors into a safetensors file\n"
               "  detect INPUT...       instance detection + masks (Mask R-CNN): boxes, labels, scores, COCO RLE\n"
               "  bench                 latency / throughput beside the machine's measured GEMM rate\n"
               "  info                  parameters, FLOPs, output shapes; checks a weights file against the model\n"
               "run 'mambacv <command> --help' for the options of a command\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  try {
    for (const auto& c : mambacv::cli::commands())
      if (cmd == c.name) return c.run(args);
    std::fprintf(stderr, "mambacv: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mambacv %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
