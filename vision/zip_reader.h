// vision/zip_reader.h - a minimal, bounds-checked reader for the zip archives torch.save writes (private).
//
// Supports what PyTorch checkpoints use: a central directory (with ZIP64 records for archives/entries over 4 GiB),
// STORED entries (torch's default, 64-byte aligned) and DEFLATE entries (archives re-zipped by other tools).
// No encryption, no multi-disk archives. Every offset and size read from the file is checked against the file
// size; any inconsistency throws Error naming the file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "vision/mapped_file.h"

namespace mambacv::detail {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 STORED, 8 DEFLATE
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

// Bytes of one entry: either a view into the mapping (STORED) or an owned inflated buffer (DEFLATE).
struct ZipData {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::shared_ptr<void> owner;  // keeps `data` alive
};

class ZipReader {
 public:
  // Parses the central directory. Throws Error naming `path` when the file is not a valid zip archive.
  ZipReader(std::shared_ptr<MappedFile> file, std::string path);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  // nullptr when absent (the first entry of that name wins).
  const ZipEntry* find(const std::string& name) const;
  // Reads (and, for DEFLATE, inflates) an entry; with verify_crc the CRC-32 of the bytes must match the directory.
  ZipData read(const ZipEntry& e, bool verify_crc) const;

 private:
  std::shared_ptr<MappedFile> file_;
  std::string path_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> index_;
};

}  // namespace mambacv::detail
