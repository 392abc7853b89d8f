// tools/inputs.h - what the image commands take as INPUT: files, folders (recursive) and @list.txt files.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace mambacv::cli {

// Expands the INPUT arguments in order: a folder becomes its image files (recursively, sorted by path; files
// without an image extension are skipped), @FILE becomes the non-empty lines of FILE that do not start with '#'
// (relative paths are taken relative to FILE's folder, so a list travels with its dataset), "-" or "@-" the lines
// of standard input (relative to the working directory), anything else is kept as given (a missing file is
// reported when it is read). A folder's skipped files are reported on stderr by `command`: how many and their
// extensions. Throws Error for an unreadable @list or folder.
std::vector<std::string> expand_inputs(const std::vector<std::string>& args, const char* command = "mambacv");

// A progress bar on stderr, drawn only when stderr is a terminal and there is more than one step.
class Progress {
 public:
  Progress(const char* what, size_t total);
  void step(size_t done);
  ~Progress();

 private:
  const char* what_;
  size_t total_;
  bool active_;
  double t0_;
};

}  // namespace mambacv::cli
