#include "tools/inputs.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "mambacv/error.h"
#include "tools/commands.h"

namespace mambacv::cli {
namespace fs = std::filesystem;

namespace {
bool has_image_extension(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* x : {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jpe",
                        ".jp2", ".pnm", ".sr", ".ras", ".exr", ".hdr", ".pic"})
    if (e == x) return true;
  return false;
}
}  // namespace

namespace {
// The non-empty, non-comment lines of a list, relative paths taken against `base`.
void read_list(std::istream& f, const fs::path& base, std::vector<std::string>* out) {
  std::string line;
  while (std::getline(f, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    size_t s = line.find_first_not_of(" \t");
    if (s == std::string::npos || line[s] == '#') continue;
    fs::path p = line.substr(s);
    out->push_back((p.is_absolute() || base.empty() ? p : base / p).lexically_normal().string());
  }
}
}  // namespace

std::vector<std::string> expand_inputs(const std::vector<std::string>& args, const char* command) {
  std::vector<std::string> out;
  bool stdin_read = false;
  for (const std::string& a : args) {
    std::error_code ec;
    if (a == "-" || a == "@-") {
      MAMBACV_CHECK(!stdin_read, "input list - (standard input) given twice");
      stdin_read = true;
      read_list(std::cin, fs::path(), &out);  // relative to the working directory
    } else if (a.size() > 1 && a[0] == '@') {
      fs::path list = a.substr(1);
      std::ifstream f(list);
      MAMBACV_CHECK(f.good(), "input list " << list.string() << ": cannot open the file");
      read_list(f, list.parent_path(), &out);
    } else if (fs::is_directory(a, ec)) {
      std::vector<std::string> found;
      fs::recursive_directory_iterator it(a, fs::directory_options::skip_permission_denied, ec), end;
      MAMBACV_CHECK(!ec, "input folder " << a << ": " << ec.message());
      std::map<std::string, int> skipped;  // extension -> files
      for (; it != end; it.increment(ec)) {
        if (ec) break;
        if (!it->is_regular_file(ec)) continue;
        if (has_image_extension(it->path()))
          found.push_back(it->path().string());
        else
          ++skipped[it->path().extension().empty() ? "(none)" : it->path().extension().string()];
      }
      if (!skipped.empty()) {
        int n = 0;
        std::string exts;
        for (const auto& [e, k] : skipped) {
          n += k;
          exts += (exts.empty() ? "" : ", ") + e + (k > 1 ? " x" + std::to_string(k) : "");
        }
        std::fprintf(stderr, "mambacv %s: folder %s: skipped %d file(s) that are not images by extension (%s)\n",
                     command, a.c_str(), n, exts.c_str());
      }
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(a);
    }
  }
  return out;
}

Progress::Progress(const char* what, size_t total)
    : what_(what), total_(total), active_(total > 1 && isatty(fileno(stderr))), t0_(now_s()) {}

void Progress::step(size_t done) {
  if (!active_) return;
  const int width = 30;
  int filled = total_ ? static_cast<int>(width * done / total_) : width;
  double el = now_s() - t0_;
  std::fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu  %.1fs", what_, filled, "##############################",
               width - filled, "", done, total_, el);
  std::fflush(stderr);
}

Progress::~Progress() {
  if (active_) std::fprintf(stderr, "\n");
}

}  // namespace mambacv::cli
