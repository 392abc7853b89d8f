// vision/mapped_file.h - a read-only POSIX memory mapping of a whole file (private to the weight loaders).
//
// The mapping lives as long as the last shared_ptr to it; tensors that view its bytes hold that pointer as their
// keep-alive. Note: a file that another process truncates while mapped makes reads fault (SIGBUS); weight files
// are expected to stay unchanged while loaded.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "mambacv/error.h"

namespace mambacv::detail {

class MappedFile {
 public:
  // Maps `path` read-only. Throws Error naming the file when it is missing, unreadable, not a regular file or
  // cannot be mapped. An empty file is valid (data() is null, size() is 0).
  static std::shared_ptr<MappedFile> open(const std::string& path) {
    // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; fstat below refuses it
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    MAMBACV_CHECK(fd >= 0, path << ": cannot open weight file: " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      MAMBACV_FAIL(path << ": cannot stat weight file: " << std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      MAMBACV_FAIL(path << ": not a regular file");
    }
    auto m = std::shared_ptr<MappedFile>(new MappedFile());
    m->size_ = static_cast<size_t>(st.st_size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        MAMBACV_FAIL(path << ": cannot memory-map " << m->size_ << " bytes: " << std::strerror(e));
      }
      m->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);  // the mapping stays valid after the descriptor is closed
    return m;
  }

  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Little-endian integer reads from unaligned bytes (all weight formats here are little-endian).
inline uint64_t read_le(const uint8_t* p, int nbytes) {
  uint64_t v = 0;
  for (int i = nbytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace mambacv::detail
