// mambacv/error.h - the one exception type of the library and its check macro.
// Library code never exits or aborts: every failure is an Error whose message names the file, tensor or argument,
// what was expected and what was found.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mambacv {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace mambacv

// MAMBACV_CHECK(cond, "tensor " << name << " has shape " << s) throws mambacv::Error when cond is false.
#define MAMBACV_CHECK(cond, msg)                 \
  do {                                           \
    if (!(cond)) {                               \
      std::ostringstream mambacv_check_oss_;     \
      mambacv_check_oss_ << msg;                 \
      throw ::mambacv::Error(mambacv_check_oss_.str()); \
    }                                            \
  } while (0)

#define MAMBACV_FAIL(msg)                        \
  do {                                           \
    std::ostringstream mambacv_check_oss_;       \
    mambacv_check_oss_ << msg;                   \
    throw ::mambacv::Error(mambacv_check_oss_.str()); \
  } while (0)
