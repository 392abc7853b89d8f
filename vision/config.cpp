// Model config files: {"arch": ..., "config": {upstream constructor kwargs}, optional "labels", "description",
// "checkpoint", "checkpoint_url", "weights"}; other top-level keys are ignored, so every golden fixture's json is
// itself a valid config.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mambacv/mambacv.h"

namespace mambacv {
namespace fs = std::filesystem;

// The folder of the configs this library ships with, as text after a marker, ended by a newline or NUL. Built, it
// names the source tree's configs/. `cmake --install` (cmake/install_config_dir.cmake) writes
// <prefix>/share/mambacv/configs over it in the installed copies of the library and the command line, with the
// prefix that install went to, so an installed library finds its configs wherever it was installed.
extern char shipped_config_dir_record[4096];
#ifndef MAMBACV_CONFIG_DIR
#define MAMBACV_CONFIG_DIR ""
#endif
char shipped_config_dir_record[4096] = "mambacv-shipped-config-dir:" MAMBACV_CONFIG_DIR "\n";

namespace {
// Where named configs are looked up, in order: set_config_dirs' list; $MAMBACV_CONFIG_DIR; <prefix>/share/mambacv/
// configs next to the running program (<prefix>/bin/mambacv); the folder this library ships with (above).
std::mutex g_dirs_mutex;
std::vector<std::string> g_user_dirs;  // set_config_dirs

fs::path shipped_config_dir() {
  constexpr std::size_t marker = sizeof("mambacv-shipped-config-dir:") - 1;
  // read through volatile: the bytes change after compilation, so they must not be folded into constants
  const volatile char* record = shipped_config_dir_record;
  std::string dir;
  for (std::size_t i = marker; i < sizeof(shipped_config_dir_record) && record[i] != '\0' && record[i] != '\n'; ++i)
    dir += record[i];
  return dir;
}

std::vector<fs::path> config_dirs() {
  std::vector<fs::path> dirs;
  {
    std::lock_guard<std::mutex> lock(g_dirs_mutex);
    for (const auto& d : g_user_dirs) dirs.emplace_back(d);
  }
  if (const char* e = std::getenv("MAMBACV_CONFIG_DIR")) dirs.emplace_back(e);
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "share" / "mambacv" / "configs");
  const fs::path shipped = shipped_config_dir();
  if (!shipped.empty()) dirs.push_back(shipped);
  return dirs;
}

ModelConfig parse_config_file(const fs::path& p, const std::string& name) {
  std::ifstream f(p);
  MAMBACV_CHECK(f.good(), "config " << p.string() << ": cannot open the file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    MAMBACV_FAIL("config " << p.string() << ": not valid JSON (" << e.what() << ")");
  }
  MAMBACV_CHECK(j.is_object(), "config " << p.string() << ": expected a JSON object {\"arch\": ..., \"config\": {...}}");
  MAMBACV_CHECK(j.contains("arch") && j["arch"].is_string(),
                "config " << p.string() << ": missing string key \"arch\" (vim, vmamba, vmamba_backbone, mask_rcnn)");
  MAMBACV_CHECK(j.contains("config") && j["config"].is_object(),
                "config " << p.string() << ": missing object key \"config\" (the upstream constructor kwargs)");
  ModelConfig c;
  c.name = name;
  c.path = p.string();
  c.arch = j["arch"].get<std::string>();
  c.json = j["config"].dump();
  const auto beside = [&p](const std::string& f) {
    fs::path l = f;
    return (l.is_absolute() ? l : p.parent_path() / l).string();
  };
  const auto text = [&j, &p](const char* key) -> std::string {
    if (!j.contains(key)) return "";
    MAMBACV_CHECK(j[key].is_string(), "config " << p.string() << ": \"" << key << "\" must be a string");
    return j[key].get<std::string>();
  };
  if (!text("labels").empty()) c.labels = beside(text("labels"));
  if (!text("weights").empty()) c.weights = beside(text("weights"));
  c.description = text("description");
  c.checkpoint = text("checkpoint");
  c.checkpoint_url = text("checkpoint_url");
  return c;
}
}  // namespace

std::vector<std::string> config_search_path() {
  std::vector<std::string> out;
  for (const auto& d : config_dirs()) out.push_back(d.string());
  return out;
}

void set_config_dirs(const std::vector<std::string>& dirs) {
  std::lock_guard<std::mutex> lock(g_dirs_mutex);
  g_user_dirs = dirs;
}

std::vector<std::string> list_model_configs() {
  std::vector<std::string> names;
  for (const auto& d : config_dirs()) {
    std::error_code ec;
    if (!fs::is_directory(d, ec)) continue;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().extension() == ".json") names.push_back(e.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

std::vector<std::string> read_label_file(const std::string& path) {
  std::ifstream f(path);
  MAMBACV_CHECK(f.good(), "labels " << path << ": cannot open the file");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back(line);
  }
  while (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

std::vector<std::string> load_labels(const ModelConfig& cfg, int num_classes) {
  std::error_code ec;
  if (!cfg.labels.empty() && fs::is_regular_file(cfg.labels, ec)) {
    auto l = read_label_file(cfg.labels);
    if (static_cast<int>(l.size()) == num_classes) return l;
  }
  // the shipped lists of the two datasets the released models are trained on
  const char* fallback = num_classes == 1000 ? "imagenet1k_labels.txt" : num_classes == 80 ? "coco80_labels.txt" : nullptr;
  if (fallback) {
    for (const auto& d : config_dirs()) {
      fs::path p = d / fallback;
      if (fs::is_regular_file(p, ec)) return read_label_file(p.string());
    }
  }
  return {};
}

ModelConfig load_model_config(const std::string& name_or_path) {
  fs::path p(name_or_path);
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) return parse_config_file(p, p.stem().string());
  // "vim_tiny" or "vim_tiny.json" (no folder part, not a file here) name a shipped config
  const bool has_folder = name_or_path.find('/') != std::string::npos;
  MAMBACV_CHECK(!has_folder, "config " << name_or_path << ": no such file");
  const std::string name = p.extension() == ".json" ? p.stem().string() : name_or_path;
  for (const auto& d : config_dirs()) {
    fs::path c = d / (name + ".json");
    if (fs::is_regular_file(c, ec)) return parse_config_file(c, name);
  }
  std::ostringstream known;
  for (const auto& n : list_model_configs()) known << " " << n;
  MAMBACV_FAIL("--model " << name_or_path << ": not a config file and not a known model name; known models:"
                          << (known.str().empty() ? " (none found; set MAMBACV_CONFIG_DIR)" : known.str()));
}

}  // namespace mambacv
