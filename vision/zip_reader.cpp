// A minimal zip reader for PyTorch checkpoints. Format facts (PKWARE APPNOTE.TXT, sections 4.3 and 4.5):
//   local file header   "PK\3\4" (30 bytes + name + extra) followed by the entry's data
//   central directory   one "PK\1\2" record (46 bytes + name + extra + comment) per entry
//   end of central dir  "PK\5\6" (22 bytes + comment up to 65535), found by scanning back from the file end
//   ZIP64               when a 16/32-bit field is saturated (0xFFFF / 0xFFFFFFFF) the real value lives in the
//                       ZIP64 end record ("PK\6\6", located by the "PK\6\7" locator just before "PK\5\6") and in
//                       each entry's extra field id 0x0001 (uncompressed, compressed, offset, disk: only those
//                       whose regular field is saturated, in that order).
// The sizes in the central directory are authoritative (local headers may defer them to a data descriptor).
#include "vision/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace mambacv::detail {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
constexpr size_t kEndSize = 22, kCentralSize = 46, kLocalSize = 30, kZip64EndSize = 56, kZip64LocatorSize = 20;
// DEFLATE cannot expand data by more than about 1032:1; a larger claimed size is a corrupt or hostile entry.
constexpr uint64_t kMaxDeflateRatio = 1032;

// Bounds-checked little-endian cursor over [begin, end) of the mapping.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, uint64_t pos, const std::string& path, const char* what)
      : base_(base), size_(size), pos_(pos), path_(path), what_(what) {}
  uint64_t take(int n) {
    need(static_cast<uint64_t>(n));
    uint64_t v = read_le(base_ + pos_, n);
    pos_ += static_cast<uint64_t>(n);
    return v;
  }
  std::string bytes(uint64_t n) {
    need(n);
    std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(uint64_t n) {
    need(n);
    pos_ += n;
  }
  uint64_t pos() const { return pos_; }

 private:
  void need(uint64_t n) const {
    MAMBACV_CHECK(pos_ <= size_ && n <= size_ - pos_,
                  path_ << ": corrupt zip archive: " << what_ << " runs past the end of the file");
  }
  const uint8_t* base_;
  uint64_t size_, pos_;
  const std::string& path_;
  const char* what_;
};

}  // namespace

ZipReader::ZipReader(std::shared_ptr<MappedFile> file, std::string path) : file_(std::move(file)), path_(std::move(path)) {
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  MAMBACV_CHECK(size >= kEndSize, path_ << ": not a zip archive (" << size << " bytes, too short)");

  // The end-of-central-directory record: the last "PK\5\6" whose comment length reaches exactly the file end.
  uint64_t end_pos = UINT64_MAX;
  const uint64_t lowest = size > kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  for (uint64_t p = size - kEndSize + 1; p-- > lowest;) {
    if (read_le(base + p, 4) == kEndSig && p + kEndSize + read_le(base + p + 20, 2) == size) {
      end_pos = p;
      break;
    }
  }
  MAMBACV_CHECK(end_pos != UINT64_MAX,
                path_ << ": not a zip archive or truncated: no end-of-central-directory record found");
  Cursor end(base, size, end_pos + 4, path_, "end of central directory");
  const uint64_t disk = end.take(2), cd_disk = end.take(2);
  end.take(2);  // entries on this disk
  uint64_t count = end.take(2), cd_size = end.take(4), cd_offset = end.take(4);
  MAMBACV_CHECK(disk == 0 && cd_disk == 0, path_ << ": multi-disk zip archives are not supported");

  if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // ZIP64: the locator sits right before the end record and points at the ZIP64 end record.
    MAMBACV_CHECK(end_pos >= kZip64LocatorSize && read_le(base + end_pos - kZip64LocatorSize, 4) == kZip64LocatorSig,
                  path_ << ": corrupt zip archive: saturated end record but no ZIP64 locator");
    Cursor loc(base, size, end_pos - kZip64LocatorSize + 4, path_, "ZIP64 locator");
    loc.take(4);
    const uint64_t z64 = loc.take(8);
    MAMBACV_CHECK(z64 <= size && kZip64EndSize <= size - z64 && read_le(base + z64, 4) == kZip64EndSig,
                  path_ << ": corrupt zip archive: bad ZIP64 end-of-central-directory offset " << z64);
    Cursor z(base, size, z64 + 4 + 8 + 2 + 2 + 4 + 4, path_, "ZIP64 end of central directory");
    z.take(8);  // entries on this disk
    count = z.take(8);
    cd_size = z.take(8);
    cd_offset = z.take(8);
  }
  MAMBACV_CHECK(cd_offset <= size && cd_size <= size - cd_offset,
                path_ << ": corrupt zip archive: central directory [" << cd_offset << ", +" << cd_size
                      << ") outside the file (" << size << " bytes; truncated?)");
  MAMBACV_CHECK(count <= cd_size / kCentralSize, path_ << ": corrupt zip archive: " << count << " entries cannot fit a "
                                                       << cd_size << "-byte central directory");

  Cursor c(base, cd_offset + cd_size, cd_offset, path_, "central directory");
  entries_.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    MAMBACV_CHECK(c.take(4) == kCentralSig, path_ << ": corrupt zip archive: bad central directory record " << i);
    ZipEntry e;
    c.skip(4);  // version made by, version needed
    e.flags = static_cast<uint16_t>(c.take(2));
    e.method = static_cast<uint16_t>(c.take(2));
    c.skip(4);  // time, date
    e.crc32 = static_cast<uint32_t>(c.take(4));
    e.compressed_size = c.take(4);
    e.uncompressed_size = c.take(4);
    const uint64_t name_len = c.take(2), extra_len = c.take(2), comment_len = c.take(2);
    uint64_t disk_start = c.take(2);
    c.skip(6);  // internal, external attributes
    e.local_header_offset = c.take(4);
    e.name = c.bytes(name_len);
    // ZIP64 extended information in the extra field.
    const uint64_t extra_end = c.pos() + extra_len;
    Cursor x(base, cd_offset + cd_size, c.pos(), path_, "zip extra field");
    c.skip(extra_len);
    while (x.pos() + 4 <= extra_end) {
      const uint64_t id = x.take(2), len = x.take(2);
      MAMBACV_CHECK(x.pos() + len <= extra_end, path_ << ": corrupt zip archive: extra field of '" << e.name
                                                      << "' overruns its record");
      if (id == 0x0001) {
        Cursor f(base, x.pos() + len, x.pos(), path_, "ZIP64 extra field");
        if (e.uncompressed_size == 0xffffffff) e.uncompressed_size = f.take(8);
        if (e.compressed_size == 0xffffffff) e.compressed_size = f.take(8);
        if (e.local_header_offset == 0xffffffff) e.local_header_offset = f.take(8);
        if (disk_start == 0xffff) disk_start = f.take(4);
      }
      x.skip(len);
    }
    c.skip(comment_len);
    MAMBACV_CHECK(disk_start == 0, path_ << ": multi-disk zip archives are not supported");
    index_.emplace(e.name, entries_.size());  // keeps the first entry of a name
    entries_.push_back(std::move(e));
  }
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

ZipData ZipReader::read(const ZipEntry& e, bool verify_crc) const {
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  MAMBACV_CHECK(!(e.flags & 1), path_ << ": zip entry '" << e.name << "' is encrypted");
  Cursor l(base, size, e.local_header_offset, path_, "local file header");
  MAMBACV_CHECK(l.take(4) == kLocalSig, path_ << ": corrupt zip archive: no local header for '" << e.name << "' at offset "
                                               << e.local_header_offset);
  l.skip(22);  // version, flags, method, time, date, crc, sizes: the central directory's copies are used
  const uint64_t name_len = l.take(2), extra_len = l.take(2);
  l.skip(name_len);
  l.skip(extra_len);  // torch pads this field so the data starts 64-byte aligned
  const uint64_t begin = l.pos();
  MAMBACV_CHECK(e.compressed_size <= size - begin, path_ << ": zip entry '" << e.name << "' (" << e.compressed_size
                                                         << " bytes at offset " << begin
                                                         << ") runs past the end of the file (truncated?)");
  ZipData out;
  if (e.method == 0) {
    MAMBACV_CHECK(e.compressed_size == e.uncompressed_size,
                  path_ << ": corrupt zip archive: stored entry '" << e.name << "' has compressed size "
                        << e.compressed_size << " but uncompressed size " << e.uncompressed_size);
    out.data = base + begin;
    out.size = e.compressed_size;
    out.owner = file_;
  } else if (e.method == 8) {
    MAMBACV_CHECK(e.uncompressed_size <= e.compressed_size * kMaxDeflateRatio + 1024,
                  path_ << ": corrupt zip archive: deflated entry '" << e.name << "' claims " << e.uncompressed_size
                        << " bytes from " << e.compressed_size);
    std::shared_ptr<uint8_t> buf;
    try {
      buf.reset(new uint8_t[std::max<uint64_t>(e.uncompressed_size, 1)], std::default_delete<uint8_t[]>());
    } catch (const std::bad_alloc&) {
      MAMBACV_FAIL(path_ << ": out of memory inflating zip entry '" << e.name << "' (" << e.uncompressed_size << " bytes)");
    }
    // Raw DEFLATE stream (windowBits -15), inflated in pieces since z_stream counts in 32-bit units.
    z_stream zs{};
    MAMBACV_CHECK(inflateInit2(&zs, -15) == Z_OK, path_ << ": zlib inflateInit2 failed");
    uint64_t in_pos = 0, out_pos = 0;
    int rc = Z_OK;
    while (rc == Z_OK) {
      const uint64_t in_left = e.compressed_size - in_pos, out_left = e.uncompressed_size - out_pos;
      zs.next_in = const_cast<Bytef*>(base + begin + in_pos);
      zs.avail_in = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
      zs.next_out = buf.get() + out_pos;
      zs.avail_out = static_cast<uInt>(std::min<uint64_t>(out_left, 1u << 30));
      const uInt ai = zs.avail_in, ao = zs.avail_out;
      rc = inflate(&zs, Z_NO_FLUSH);
      in_pos += ai - zs.avail_in;
      out_pos += ao - zs.avail_out;
      if (rc == Z_OK && ai == zs.avail_in && ao == zs.avail_out) rc = Z_BUF_ERROR;  // no progress possible
    }
    inflateEnd(&zs);
    MAMBACV_CHECK(rc == Z_STREAM_END && out_pos == e.uncompressed_size,
                  path_ << ": corrupt zip archive: cannot inflate entry '" << e.name << "' (zlib status " << rc << ", "
                        << out_pos << " of " << e.uncompressed_size << " bytes)");
    out.data = buf.get();
    out.size = e.uncompressed_size;
    out.owner = buf;
  } else {
    MAMBACV_FAIL(path_ << ": zip entry '" << e.name << "' uses compression method " << e.method
                       << "; only stored (0) and deflate (8) are supported");
  }
  if (verify_crc) {
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t p = 0; p < out.size; p += 1u << 30)
      crc = crc32(crc, out.data + p, static_cast<uInt>(std::min<uint64_t>(out.size - p, 1u << 30)));
    MAMBACV_CHECK(crc == e.crc32, path_ << ": corrupt zip archive: CRC-32 mismatch in entry '" << e.name << "'");
  }
  return out;
}

}  // namespace mambacv::detail
