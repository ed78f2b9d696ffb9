#include "engine/file_system.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace logkv::engine {

namespace {
// The payload that marks a status as NoSpaceError. Never persisted or sent.
constexpr absl::string_view kNoSpacePayloadUrl = "logkv.engine/no-space";
}  // namespace

absl::Status NoSpaceError(absl::string_view message) {
  absl::Status status = absl::ResourceExhaustedError(message);
  status.SetPayload(kNoSpacePayloadUrl, absl::Cord("disk full"));
  return status;
}

bool IsNoSpace(const absl::Status& status) {
  return absl::IsResourceExhausted(status) && status.GetPayload(kNoSpacePayloadUrl).has_value();
}

absl::StatusOr<std::unique_ptr<WritableFile>> FileSystem::ReopenWritableFile(
    const std::string& path, uint64_t) {
  return absl::UnimplementedError(
      absl::StrCat("this file system cannot reopen ", path, " for appending"));
}

absl::Status WithContext(absl::string_view context, const absl::Status& status) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(context, status.message()));
  status.ForEachPayload([&out](absl::string_view type_url, const absl::Cord& payload) {
    out.SetPayload(type_url, payload);
  });
  return out;
}

namespace {

absl::Status ErrnoStatus(absl::string_view what, const std::string& path, int error) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return NoSpaceError(message);
    default:
      return absl::InternalError(message);
  }
}

// Disk blocks for [offset, offset + length) of fd: 0, or the error. A file
// system without fallocate gets its pages allocated as they are written
// (glibc writes a byte a block where the call is unsupported, and where even
// that is refused there is nothing to reserve ahead): 0 there too. Any other
// failure (an I/O error, a file too large) is returned: taking the range for
// reserved would turn a later append into a write fault (SIGBUS) where the
// blocks cannot be had. Interrupted calls are made again.
int ReserveBlocks(int fd, uint64_t offset, uint64_t length) {
  int rc;
  do {
    rc = ::posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (rc == EINTR);
  return rc == EOPNOTSUPP || rc == ENOSYS ? 0 : rc;
}

// A file descriptor closed on destruction.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// The first block reservation of a segment file; it doubles as the segment
// fills, up to the segment's capacity, in steps of at most
// kMaxReservationStepBytes: the blocks reserved ahead of the data are disk
// that du counts and nothing uses, so they stay a few MiB per active segment
// (a doubling alone let a 33 MiB segment hold 64 MiB of blocks).
constexpr uint64_t kFirstReservationBytes = 1 << 20;
constexpr uint64_t kMaxReservationStepBytes = 4 << 20;

// Maps a segment file shared and writable, without read-ahead. An append
// that reaches a page not yet in the page cache faults it in, and the fault
// "reads" it: for the reserved (unwritten) blocks ahead of the data that is
// zeroing the page. With read-ahead that fault fills the whole read-ahead
// window, which grows as the appends go on in order, up to the device's
// read_ahead_kb (8 MiB on the machine this was measured on): one append now
// and then zeroed megabytes, and the loop thread that made it stalled
// 20-50 ms (docs/performance.md, "Runs against a warm server"). Without
// it each fault zeroes the page it needs. The advice is only advice: a
// kernel that refuses it maps the file all the same.
void* MapWritable(int fd, uint64_t capacity_bytes) {
  void* base = ::mmap(nullptr, capacity_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base != MAP_FAILED) (void)::madvise(base, capacity_bytes, MADV_RANDOM);
  return base;
}

uint64_t PageBytes() {
  static const uint64_t page_bytes = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page_bytes;
}
uint64_t WholePages(uint64_t bytes) { return bytes / PageBytes() * PageBytes(); }

// The active segment: a file of its full capacity mapped shared and
// writable. Appends are memcpys into the page cache; nothing is lost if the
// process dies, and fdatasync on the descriptor writes the dirtied pages
// back. Disk blocks are reserved (fallocate) ahead of the appends in steps
// that double, so a store of a few keys holds a megabyte per shard rather
// than the whole capacity, and a full disk still fails in Append, never in a
// page fault. The rest of the file is a hole, read as zeros.
class PosixWritableFile final : public WritableFile {
 public:
  // size: bytes already in the file (appends go after them).
  PosixWritableFile(std::string path, int fd, char* base, uint64_t capacity, uint64_t reserved,
                    uint64_t size = 0)
      : path_(std::move(path)),
        fd_(fd),
        base_(base),
        capacity_(capacity),
        unmapped_(WholePages(size)),
        reserved_(reserved),
        size_(size) {}
  ~PosixWritableFile() override { (void)Close(); }

  absl::Status Append(absl::string_view data) override {
    if (base_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, " is closed"));
    // One writer; StartWriteback and Sync read both from another thread.
    const uint64_t size = size_.load(std::memory_order_relaxed);
    const uint64_t reserved = reserved_.load(std::memory_order_relaxed);
    if (data.size() > capacity_ - size) {
      return absl::ResourceExhaustedError(absl::StrCat("append of ", data.size(), " bytes to ",
                                                       path_, " exceeds its capacity of ",
                                                       capacity_, " bytes"));
    }
    if (size + data.size() > reserved) {
      if (absl::Status status = Reserve(size + data.size()); !status.ok()) return status;
    }
    std::memcpy(base_ + size, data.data(), data.size());
    size_.store(size + data.size(), std::memory_order_release);
    return absl::OkStatus();
  }

  void Prepare(uint64_t bytes) override {
    if (base_ == nullptr) return;
    const uint64_t size = size_.load(std::memory_order_relaxed);
    const uint64_t end = std::min(capacity_, size + std::min(bytes, capacity_));
    if (end <= size) return;
    // The pages from the one being filled to the one `end` falls in, each
    // with its blocks reserved whole (a write fault on a page without them
    // would be a SIGBUS on a full disk, not an error).
    const uint64_t page = PageBytes();
    const uint64_t first = size / page * page;
    const uint64_t last = std::min(capacity_, (end + page - 1) / page * page);
    if (last > reserved_.load(std::memory_order_relaxed) && !Reserve(last).ok()) return;
#ifdef MADV_POPULATE_WRITE
    if (::madvise(base_ + first, last - first, MADV_POPULATE_WRITE) == 0) return;
    // Only a kernel without it (before 5.14) falls back; another error
    // (EFAULT, ENOMEM) would fault the same way below.
    if (errno != EINVAL) return;
#endif
    // A write fault on each page, writing back the zero it holds: past the
    // data, where no reader looks and only this writer writes.
    for (uint64_t at = first; at < last; at += page) {
      volatile char* byte = base_ + std::max(at, size);
      *byte = *byte;
    }
  }

  absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n, char*) const override {
    if (base_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, " is closed"));
    if (offset > capacity_ || n > capacity_ - offset) {
      return absl::OutOfRangeError(
          absl::StrCat("read of ", n, " bytes at ", offset, " past the end of ", path_));
    }
    return absl::string_view(base_ + offset, n);
  }

  absl::Status Sync() override {
    if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, " is closed"));
    UnmapWritten(WholePages(size_.load(std::memory_order_acquire)));
    if (::fdatasync(fd_) != 0) return ErrnoStatus("fdatasync", path_, errno);
    return absl::OkStatus();
  }

  void StartWriteback() override {
    // Whole pages only: the page being filled would be written now and again
    // later, and where the device wants stable pages the next append into
    // it would wait for that write.
    const uint64_t whole_pages_bytes = WholePages(size_.load(std::memory_order_acquire));
    if (fd_ >= 0 && whole_pages_bytes > 0) {
      UnmapWritten(whole_pages_bytes);
      ::sync_file_range(fd_, 0, static_cast<off_t>(whole_pages_bytes), SYNC_FILE_RANGE_WRITE);
    }
  }

  absl::Status Close() override {
    if (fd_ < 0) return absl::OkStatus();
    absl::Status status;
    if (::munmap(base_, capacity_) != 0) status = ErrnoStatus("munmap", path_, errno);
    base_ = nullptr;
    if (::ftruncate(fd_, static_cast<off_t>(size_.load(std::memory_order_acquire))) != 0 &&
        status.ok()) {
      status = ErrnoStatus("ftruncate", path_, errno);
    }
    ::close(fd_);
    fd_ = -1;
    return status;
  }

  uint64_t Size() const override { return size_.load(std::memory_order_acquire); }
  uint64_t Capacity() const override { return capacity_; }
  uint64_t Reserved() const override {
    return std::max(reserved_.load(std::memory_order_acquire),
                    size_.load(std::memory_order_acquire));
  }

 private:
  // Disk blocks for the file up to at least `end` (at most the capacity):
  // from the reservation on, in steps that double up to
  // kMaxReservationStepBytes.
  absl::Status Reserve(uint64_t end) {
    const uint64_t reserved = reserved_.load(std::memory_order_relaxed);
    const uint64_t step = std::clamp(reserved, kFirstReservationBytes, kMaxReservationStepBytes);
    const uint64_t want = std::min(capacity_, std::max(end, reserved + step));
    const int rc = ReserveBlocks(fd_, reserved, want - reserved);
    if (rc != 0) return ErrnoStatus("fallocate", path_, rc);
    reserved_.store(want, std::memory_order_release);
    return absl::OkStatus();
  }

  // Takes the appended pages below `to` (whole pages, never appended to
  // again) out of this process's page tables before they are written back;
  // the page cache keeps them, dirty, and a read maps them again, read-only.
  // Writing back a page that is mapped writable and dirty write-protects it
  // first, one page at a time, and each of those flushes the TLB of every
  // core that runs one of this process's threads: an interrupt to the other
  // core per page, on a virtual machine an exit to the hypervisor. 11% of
  // logkvd's CPU time on pipelined SETs was spent there (docs/performance.md,
  // "Appended pages leave the mapping before their write-back"). Taken out
  // as a range they cost a flush per page table (2 MiB), not per page. Sync,
  // StartWriteback and Close are serialised by the owner (file_system.h).
  // On tmpfs nothing is written back and this only costs the reads that map
  // the pages again; it is done there too. A refusal (a locked mapping)
  // loses only the saving.
  void UnmapWritten(uint64_t to) {
    if (base_ == nullptr || to <= unmapped_) return;
    (void)::madvise(base_ + unmapped_, to - unmapped_, MADV_DONTNEED);
    unmapped_ = to;
  }

  const std::string path_;
  int fd_;
  char* base_;
  const uint64_t capacity_;
  // Below it the appended pages were taken out of the page tables (or,
  // for a reopened file, were never mapped by it).
  uint64_t unmapped_;
  // Bytes from the start that have disk blocks, and bytes appended: the
  // writer changes them, StartWriteback and Sync (another thread) read them.
  std::atomic<uint64_t> reserved_;
  std::atomic<uint64_t> size_{0};
};

// An immutable file mapped read-only; reads are views into the mapping.
class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(std::string path, const char* base, uint64_t size)
      : path_(std::move(path)), base_(base), size_(size) {}
  ~PosixReadableFile() override {
    if (base_ != nullptr) ::munmap(const_cast<char*>(base_), size_);
  }

  absl::StatusOr<absl::string_view> Read(uint64_t offset, size_t n, char*) const override {
    if (offset > size_ || n > size_ - offset) {
      return absl::OutOfRangeError(absl::StrCat("read of ", n, " bytes at ", offset,
                                                " past the end of ", path_, " (", size_,
                                                " bytes)"));
    }
    return absl::string_view(base_ + offset, n);
  }
  uint64_t Size() const override { return size_; }
  void NextData(uint64_t offset, uint64_t* begin, uint64_t* end) const override {
    // Asked once per segment scanned at start-up, so the file is opened
    // again rather than every mapped file keeping a descriptor. Where
    // SEEK_DATA is not supported it reports all of the file as data.
    *begin = std::min(offset, size_);
    *end = size_;
    if (offset >= size_) return;
    Fd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return;
    const off_t data = ::lseek(fd.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) *begin = size_;  // only a hole follows
      return;
    }
    *begin = std::min(static_cast<uint64_t>(data), size_);
    const off_t hole = ::lseek(fd.get(), data, SEEK_HOLE);
    if (hole >= data) *end = std::min(static_cast<uint64_t>(hole), size_);
  }

 private:
  const std::string path_;
  const char* base_;  // null for an empty file
  const uint64_t size_;
};

class PosixLock final : public FileSystem::Lock {
 public:
  explicit PosixLock(int fd) : fd_(fd) {}
  ~PosixLock() override {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, uint64_t capacity_bytes) override {
    if (capacity_bytes == 0) return absl::InvalidArgumentError("capacity must be positive");
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    // A file that cannot be made whole is removed: a full disk must not
    // leave an empty file behind for every write it refuses.
    auto fail = [&path](absl::Status status) {
      ::unlink(path.c_str());
      return status;
    };
    // The file has its full size from the start: appends never extend it,
    // so fdatasync does not have to write a new size. Real blocks for the
    // first part up front (more as it fills, see PosixWritableFile), so a
    // full disk fails here, not in a page fault.
    if (::ftruncate(fd.get(), static_cast<off_t>(capacity_bytes)) != 0) {
      return fail(ErrnoStatus("ftruncate", path, errno));
    }
    const uint64_t reserved = std::min(capacity_bytes, kFirstReservationBytes);
    const int rc = ReserveBlocks(fd.get(), 0, reserved);
    if (rc != 0) return fail(ErrnoStatus("fallocate", path, rc));
    void* base = MapWritable(fd.get(), capacity_bytes);
    if (base == MAP_FAILED) return fail(ErrnoStatus("mmap", path, errno));
    return std::make_unique<PosixWritableFile>(path, fd.release(), static_cast<char*>(base),
                                               capacity_bytes, reserved);
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> ReopenWritableFile(
      const std::string& path, uint64_t capacity_bytes) override {
    Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (capacity_bytes <= size) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " holds ", size, " bytes, no room below a capacity of ", capacity_bytes));
    }
    // What failed is undone: the file keeps its content and its size.
    auto fail = [&](absl::Status status) {
      if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        status = WithContext(absl::StrCat("(and ", path, " keeps its reserved size) "), status);
      }
      return status;
    };
    // As NewWritableFile: the full size at once, blocks reserved ahead of
    // the appends, the whole capacity mapped.
    if (::ftruncate(fd.get(), static_cast<off_t>(capacity_bytes)) != 0) {
      return fail(ErrnoStatus("ftruncate", path, errno));
    }
    const uint64_t reserved = std::min(capacity_bytes, size + kFirstReservationBytes);
    const int rc = ReserveBlocks(fd.get(), size, reserved - size);
    if (rc != 0) return fail(ErrnoStatus("fallocate", path, rc));
    void* base = MapWritable(fd.get(), capacity_bytes);
    if (base == MAP_FAILED) return fail(ErrnoStatus("mmap", path, errno));
    return std::make_unique<PosixWritableFile>(path, fd.release(), static_cast<char*>(base),
                                               capacity_bytes, reserved, size);
  }

  absl::StatusOr<std::unique_ptr<ReadableFile>> NewReadableFile(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
    uint64_t size = static_cast<uint64_t>(st.st_size);
    const char* base = nullptr;
    if (size > 0) {
      void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
      if (mapping == MAP_FAILED) return ErrnoStatus("mmap", path, errno);
      base = static_cast<const char*>(mapping);
    }
    return std::make_unique<PosixReadableFile>(path, base, size);
  }

  absl::Status WriteFile(const std::string& path, absl::string_view data, bool sync) override {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    if (absl::Status s = WriteAll(fd.get(), data, path); !s.ok()) return s;
    if (sync && ::fdatasync(fd.get()) != 0) return ErrnoStatus("fdatasync", path, errno);
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    std::string out;
    char buffer[1 << 16];
    while (true) {
      ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("read", path, errno);
      }
      if (n == 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

  absl::Status CreateDir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoStatus("mkdir", path, errno);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) return ErrnoStatus("opendir", path, errno);
    std::vector<std::string> names;
    while (struct dirent* entry = ::readdir(dir)) {
      absl::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(dir);
    return names;
  }

  absl::Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus("unlink", path, errno);
    return absl::OkStatus();
  }

  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus("rename", from, errno);
    return absl::OkStatus();
  }

  absl::Status TruncateFile(const std::string& path, uint64_t size) override {
    if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0) {
      return ErrnoStatus("truncate", path, errno);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat", path, errno);
    return static_cast<uint64_t>(st.st_size);
  }

  bool FileExists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  absl::Status SyncDir(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", path, errno);
    return absl::OkStatus();
  }

  absl::Status SyncFile(const std::string& path) override {
    // Linux syncs a file's data through a read-only descriptor too.
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    if (::fdatasync(fd.get()) != 0) return ErrnoStatus("fdatasync", path, errno);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Lock>> LockFile(const std::string& path) override {
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, " is locked: another logkv process uses this data directory"));
      }
      return ErrnoStatus("flock", path, errno);
    }
    return std::make_unique<PosixLock>(fd.release());
  }
};

}  // namespace

FileSystem* DefaultFileSystem() {
  static PosixFileSystem* file_system = new PosixFileSystem();
  return file_system;
}

}  // namespace logkv::engine
