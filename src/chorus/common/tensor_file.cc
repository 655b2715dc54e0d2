// Tensor files (see tensor_file.h).
//
// The decoder walks the entry list with a cursor that checks every read against the end of the
// list, then checks each entry's place in the data area against a running offset: the first
// entry starts right after the list, each next one where the previous ended, and the last ends
// at the end of the buffer. Sizes are u64 products checked with __builtin_mul_overflow, so no
// header, however crafted, makes the reader allocate or read beyond the bytes it was given.
#include "chorus/common/tensor_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "chorus/common/error.h"

namespace chorus {
namespace {

namespace fs = std::filesystem;

void putLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t getLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

bool knownDtype(uint8_t code) { return code >= 1 && code <= 10; }

bool printableName(std::string_view name) {
  for (char c : name) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

std::string shapeText(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

// Bytes of a tensor of this shape and dtype, or false on overflow of u64.
bool byteCount(const std::vector<int64_t>& shape, TensorDtype dtype, uint64_t* out) {
  uint64_t n = tensorDtypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

// Reads the entry list; every read is bounds-checked against `end`.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t at, size_t end, std::string_view source) : p_(p), at_(at), end_(end), source_(source) {}

  uint64_t le(int bytes, const char* field, size_t entry) {
    need(static_cast<size_t>(bytes), field, entry);
    uint64_t v = getLe(p_ + at_, bytes);
    at_ += static_cast<size_t>(bytes);
    return v;
  }
  std::string text(size_t n, size_t entry) {
    need(n, "name", entry);
    std::string s(reinterpret_cast<const char*>(p_ + at_), n);
    at_ += n;
    return s;
  }
  size_t at() const { return at_; }

 private:
  void need(size_t n, const char* field, size_t entry) {
    if (end_ - at_ < n)
      throw Error(str(source_, ": entry ", entry, " is cut off in its ", field, " at byte ", at_,
                      " (the entry list ends at byte ", end_, "); the file is corrupt"));
  }

  const uint8_t* p_;
  size_t at_, end_;
  std::string_view source_;
};

// Retries on EINTR and short transfers; returns the bytes moved (short only at end of file),
// or -1 with errno set.
ssize_t readFull(int fd, void* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, static_cast<char*>(buf) + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

bool writeFull(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int fsyncRetry(int fd) {
  int rc;
  do rc = ::fsync(fd);
  while (rc != 0 && errno == EINTR);
  return rc;
}

const char* fileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a pipe";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

size_t tensorDtypeSize(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kFloat64:
    case TensorDtype::kInt64:
      return 8;
    case TensorDtype::kFloat32:
    case TensorDtype::kInt32:
      return 4;
    case TensorDtype::kFloat16:
    case TensorDtype::kBFloat16:
    case TensorDtype::kInt16:
      return 2;
    case TensorDtype::kInt8:
    case TensorDtype::kUInt8:
    case TensorDtype::kBool:
      return 1;
  }
  throw InvalidArgument(str("tensor dtype code ", static_cast<int>(dtype), " is not one of the known codes 1..10"));
}

const char* tensorDtypeName(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kFloat32: return "float32";
    case TensorDtype::kFloat64: return "float64";
    case TensorDtype::kFloat16: return "float16";
    case TensorDtype::kBFloat16: return "bfloat16";
    case TensorDtype::kInt64: return "int64";
    case TensorDtype::kInt32: return "int32";
    case TensorDtype::kInt16: return "int16";
    case TensorDtype::kInt8: return "int8";
    case TensorDtype::kUInt8: return "uint8";
    case TensorDtype::kBool: return "bool";
  }
  return "unknown";
}

std::string encodeTensorTable(const std::vector<TensorRecord>& records) {
  if (records.size() > kMaxTensorEntries)
    throw InvalidArgument(str("tensor table: ", records.size(), " entries, more than the ", kMaxTensorEntries, " allowed"));
  std::string list;
  std::unordered_set<std::string_view> names;
  uint64_t dataBytes = 0;
  for (const auto& r : records) {
    if (r.name.empty() || r.name.size() > kMaxTensorNameBytes || !printableName(r.name))
      throw InvalidArgument(str("tensor table: the name '", r.name, "' must be 1 to ", kMaxTensorNameBytes,
                                " printable ASCII characters"));
    if (!names.insert(r.name).second) throw InvalidArgument(str("tensor table: the name '", r.name, "' appears twice"));
    if (!knownDtype(static_cast<uint8_t>(r.dtype)))
      throw InvalidArgument(str("tensor table: entry '", r.name, "' has the unknown dtype code ", static_cast<int>(r.dtype)));
    if (r.shape.size() > kMaxTensorRank)
      throw InvalidArgument(str("tensor table: entry '", r.name, "' has ", r.shape.size(), " dimensions, more than the ",
                                kMaxTensorRank, " allowed"));
    uint64_t want = 0;
    if (!byteCount(r.shape, r.dtype, &want))
      throw InvalidArgument(str("tensor table: entry '", r.name, "' has the shape ", shapeText(r.shape),
                                ", which has a negative dimension or more than 2^64 bytes"));
    if (want != r.bytes || (r.bytes > 0 && r.data == nullptr))
      throw InvalidArgument(str("tensor table: entry '", r.name, "' holds ", r.bytes, " bytes, but a ",
                                tensorDtypeName(r.dtype), " tensor of shape ", shapeText(r.shape), " needs ",
                                want));
    putLe(list, r.name.size(), 2);
    list += r.name;
    putLe(list, static_cast<uint8_t>(r.dtype), 1);
    putLe(list, r.shape.size(), 1);
    for (int64_t d : r.shape) putLe(list, static_cast<uint64_t>(d), 8);
    putLe(list, 0, 8);  // offset: filled in below, once the list's length is known
    putLe(list, r.bytes, 8);
    dataBytes += r.bytes;
  }
  if (list.size() > std::numeric_limits<uint32_t>::max())
    throw InvalidArgument(str("tensor table: the entry list takes ", list.size(), " bytes, more than 4 GiB"));

  std::string out;
  out.reserve(8 + list.size() + dataBytes);
  putLe(out, records.size(), 4);
  putLe(out, list.size(), 4);
  out += list;
  // Second pass: patch each offset (the 16 bytes before an entry's end are offset and length).
  uint64_t offset = 8 + list.size();
  size_t at = 8;
  for (const auto& r : records) {
    at += 2 + r.name.size() + 2 + 8 * r.shape.size();
    for (int i = 0; i < 8; ++i) out[at + i] = static_cast<char>((offset >> (8 * i)) & 0xff);
    at += 16;
    offset += r.bytes;
  }
  for (const auto& r : records) out.append(static_cast<const char*>(r.data), r.bytes);
  return out;
}

std::vector<TensorEntry> decodeTensorTable(const void* data, size_t size, std::string_view source) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (size < 8)
    throw Error(str(source, ": the tensor table is ", size, " bytes, shorter than its 8-byte header; the file is corrupt"));
  const uint64_t count = getLe(p, 4), listBytes = getLe(p + 4, 4);
  if (count > kMaxTensorEntries)
    throw Error(str(source, ": the tensor table claims ", count, " entries, more than the ", kMaxTensorEntries,
                    " allowed; the file is corrupt"));
  if (listBytes > size - 8)
    throw Error(str(source, ": the entry list claims ", listBytes, " bytes, but only ", size - 8,
                    " follow the table header; the file is corrupt"));
  const size_t listEnd = 8 + static_cast<size_t>(listBytes);

  std::vector<TensorEntry> entries;
  entries.reserve(static_cast<size_t>(std::min<uint64_t>(count, listBytes / 20)));  // an entry is 20+ bytes
  std::unordered_set<std::string> names;
  Cursor c(p, 8, listEnd, source);
  uint64_t next = listEnd;  // where the next entry's bytes must begin
  for (size_t i = 0; i < count; ++i) {
    TensorEntry e;
    const uint64_t nameLen = c.le(2, "name length", i);
    if (nameLen == 0 || nameLen > kMaxTensorNameBytes)
      throw Error(str(source, ": entry ", i, " has a name of ", nameLen, " bytes; names are 1 to ", kMaxTensorNameBytes,
                      " bytes; the file is corrupt"));
    e.name = c.text(static_cast<size_t>(nameLen), i);
    if (!printableName(e.name))
      throw Error(str(source, ": entry ", i, " has a name with bytes outside printable ASCII; the file is corrupt"));
    if (!names.insert(e.name).second)
      throw Error(str(source, ": entry '", e.name, "' appears twice; the file is corrupt"));
    const uint64_t code = c.le(1, "dtype", i);
    if (!knownDtype(static_cast<uint8_t>(code)))
      throw Error(str(source, ": entry '", e.name, "' has the unknown dtype code ", code,
                      "; it was written by a newer chorus, or the file is corrupt"));
    e.dtype = static_cast<TensorDtype>(code);
    const uint64_t rank = c.le(1, "rank", i);
    if (rank > kMaxTensorRank)
      throw Error(str(source, ": entry '", e.name, "' has ", rank, " dimensions, more than the ", kMaxTensorRank,
                      " allowed; the file is corrupt"));
    for (uint64_t d = 0; d < rank; ++d) {
      const uint64_t dim = c.le(8, "shape", i);
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(str(source, ": entry '", e.name, "' has the dimension ", dim, ", beyond 2^63; the file is corrupt"));
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    e.offset = c.le(8, "offset", i);
    e.bytes = c.le(8, "length", i);
    uint64_t want = 0;
    if (!byteCount(e.shape, e.dtype, &want))
      throw Error(str(source, ": entry '", e.name, "' has the shape ", shapeText(e.shape),
                      ", whose size in bytes overflows 64 bits; the file is corrupt"));
    if (want != e.bytes)
      throw Error(str(source, ": entry '", e.name, "' is ", e.bytes, " bytes, but a ", tensorDtypeName(e.dtype),
                      " tensor of shape ", shapeText(e.shape), " is ", want, "; the file is corrupt"));
    if (e.offset != next)
      throw Error(str(source, ": entry '", e.name, "' starts at byte ", e.offset, ", but its bytes must start at ", next,
                      " (right after the ", i == 0 ? "entry list" : "previous entry",
                      "; entries may neither overlap nor leave gaps); the file is corrupt"));
    if (e.bytes > size - e.offset)
      throw Error(str(source, ": entry '", e.name, "' needs bytes ", e.offset, " to ", e.offset, " + ", e.bytes,
                      ", past the end of the table at ", size, "; the file is truncated or corrupt"));
    e.data = p + e.offset;
    if (e.dtype == TensorDtype::kBool) {
      for (uint64_t k = 0; k < e.bytes; ++k) {
        if (e.data[k] > 1)
          throw Error(str(source, ": bool entry '", e.name, "' holds the byte ", static_cast<int>(e.data[k]),
                          " at element ", k, "; bools are 0 or 1; the file is corrupt"));
      }
    }
    next = e.offset + e.bytes;
    entries.push_back(std::move(e));
  }
  if (c.at() != listEnd)
    throw Error(str(source, ": the entry list is ", listBytes, " bytes, but its ", count, " entries take ", c.at() - 8,
                    "; the file is corrupt"));
  if (next != size)
    throw Error(str(source, ": ", size - next, " bytes follow the last entry's data; the file is corrupt"));
  return entries;
}

std::string encodeFileHeader(std::string_view magic, uint32_t version, std::string_view payload) {
  if (magic.size() != 8) throw InvalidArgument(str("encodeFileHeader: the magic '", magic, "' must be 8 bytes"));
  Digest digest = sha256(payload.data(), payload.size());
  std::string header(magic);
  putLe(header, version, 4);
  putLe(header, payload.size(), 8);
  header.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return header;
}

FileHeader decodeFileHeader(const void* data, size_t size, std::string_view magic, std::string_view what,
                            std::string_view path) {
  const auto* p = static_cast<const uint8_t*>(data);
  const std::string source = str(what, " ", path);
  if (size < magic.size() || std::memcmp(p, magic.data(), magic.size()) != 0)
    throw Error(str(source, ": not a chorus ", what, " (bad magic: it does not begin with \"", magic, "\")"));
  if (size < kFileHeaderBytes)
    throw Error(str(source, ": truncated: expected a ", kFileHeaderBytes, "-byte header, found ", size, " bytes"));
  FileHeader h;
  h.version = static_cast<uint32_t>(getLe(p + 8, 4));
  h.payloadBytes = getLe(p + 12, 8);
  std::memcpy(h.sha256.data(), p + 20, h.sha256.size());
  return h;
}

void checkFileSize(const FileHeader& header, uint64_t fileBytes, std::string_view source) {
  const uint64_t found = fileBytes < kFileHeaderBytes ? 0 : fileBytes - kFileHeaderBytes;
  if (found < header.payloadBytes)
    throw Error(str(source, ": truncated: expected ", header.payloadBytes, " payload bytes, found ", found));
  if (found > header.payloadBytes)
    throw Error(str(source, ": length mismatch: expected ", header.payloadBytes, " payload bytes, found ", found,
                    "; the file is corrupt or has something appended"));
}

void checkPayload(const FileHeader& header, const void* payload, size_t size, std::string_view source) {
  Digest digest = sha256(payload, size);
  if (size != header.payloadBytes || !constantTimeEqual(digest.data(), header.sha256.data(), digest.size()))
    throw Error(str(source, ": checksum mismatch: the file is corrupt; use an older checkpoint or start again"));
}

FramedFile readFramedFile(const std::string& path, std::string_view magic, std::string_view what,
                          const std::function<void(uint32_t version)>& checkVersion) {
  const std::string source = str(what, " ", path);
  // O_NONBLOCK: opening a named pipe must not wait for a writer; it is refused below anyway.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw SystemError(str("cannot load ", source), errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  struct stat st {};
  if (::fstat(fd, &st) != 0) throw SystemError(str("cannot load ", source, ": fstat"), errno);
  if (!S_ISREG(st.st_mode))
    throw Error(str(source, ": this is ", fileKind(st.st_mode), ", not a checkpoint file; name a file such as ",
                    "output.dir/checkpoints/ckpt-00000100.pt"));

  uint8_t head[kFileHeaderBytes];
  ssize_t got = readFull(fd, head, sizeof head);
  if (got < 0) throw SystemError(str("cannot load ", source, ": read"), errno);
  FramedFile f;
  f.header = decodeFileHeader(head, static_cast<size_t>(got), magic, what, path);
  checkVersion(f.header.version);
  checkFileSize(f.header, static_cast<uint64_t>(st.st_size), source);

  f.payload.resize(f.header.payloadBytes);
  got = readFull(fd, f.payload.data(), f.payload.size());
  if (got < 0) throw SystemError(str("cannot load ", source, ": read"), errno);
  if (static_cast<uint64_t>(got) != f.header.payloadBytes)
    throw Error(str(source, ": truncated while reading: expected ", f.header.payloadBytes, " payload bytes, found ",
                    got, " (is something writing the file?)"));
  checkPayload(f.header, f.payload.data(), f.payload.size(), source);
  return f;
}

void writeFramedFile(const std::string& path, std::string_view magic, uint32_t version, std::string_view payload,
                     std::string_view what) {
  const std::string header = encodeFileHeader(magic, version, payload);
  fs::path target(path);
  fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw Error(str("cannot save ", what, " ", path, ": cannot create the folder ", dir.string(), ": ", ec.message(),
                    "; check output.dir"));

  std::string tmp = str(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw SystemError(str("cannot save ", what, " ", path, ": open ", tmp), errno);
  auto fail = [&](const char* op) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw SystemError(str("cannot save ", what, " ", path, ": ", op, " ", tmp), err);
  };
  if (!writeFull(fd, header.data(), header.size()) || !writeFull(fd, payload.data(), payload.size())) fail("write");
  if (fsyncRetry(fd) != 0) fail("fsync");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) fail("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename to the final name");

  // The rename is durable only once the folder's entry is on disk.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw SystemError(str(what, " ", path, " written, but opening its folder to fsync failed"), errno);
  rc = fsyncRetry(dfd);
  int err = errno;
  ::close(dfd);
  if (rc != 0) throw SystemError(str(what, " ", path, " written, but fsync of its folder failed"), err);
}

}  // namespace chorus
