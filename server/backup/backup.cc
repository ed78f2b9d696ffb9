#include "server/backup/backup.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace logkv::server::backup {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kManifestFormatVersion = 1;
constexpr size_t kReadChunkBytes = 256 << 10;
// The engine's own MANIFEST: restored last (see backup.h).
constexpr char kEngineManifest[] = "MANIFEST";

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  const int error = errno;
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(error));
  if (error == ENOENT) return absl::NotFoundError(message);
  if (error == ENOSPC || error == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// Creates path and the parents it lacks, each open to its owner alone: a
// backup holds every tenant's data and the accounts' secrets (the control
// state's snapshot), as the data directory does.
absl::Status MakePrivateDirectories(const std::string& path) {
  std::error_code error;
  if (path.empty() || fs::is_directory(path, error)) return absl::OkStatus();
  const std::string parent = fs::path(path).parent_path().string();
  if (parent != path) {
    if (absl::Status status = MakePrivateDirectories(parent); !status.ok()) return status;
  }
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("cannot create", path);
  return absl::OkStatus();
}

std::string Hex(uint64_t value) { return absl::StrCat(absl::Hex(value, absl::kZeroPad16)); }

// A relative path inside a data directory: no absolute path, no "..", no
// empty or "." component, so no archive can write outside the target.
bool SafeRelativePath(absl::string_view path) {
  if (path.empty() || path.front() == '/' || path.size() > 4096) return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

absl::Status SyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  const int result = ::fsync(fd);
  const absl::Status status = result == 0 ? absl::OkStatus() : ErrnoError("cannot sync", path);
  ::close(fd);
  return status;
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Writes path atomically: a temporary file, synced, renamed over it.
absl::Status WriteFileSynced(const std::string& path, absl::string_view data) {
  const std::string temporary = path + kTemporarySuffix;
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot create", temporary);
  absl::Status status = WriteAll(fd, data, temporary);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("cannot sync", temporary);
  ::close(fd);
  if (status.ok() && ::rename(temporary.c_str(), path.c_str()) != 0) {
    status = ErrnoError("cannot rename to", path);
  }
  if (!status.ok()) ::unlink(temporary.c_str());
  return status;
}

json ManifestBody(const BackupManifest& manifest) {
  json files = json::array();
  for (const BackupFile& file : manifest.files) {
    files.push_back({{"path", file.path}, {"bytes", file.bytes}, {"xxh3", Hex(file.xxh3)}});
  }
  return json{{"format", "logkv-backup"},
              {"format_version", kManifestFormatVersion},
              {"name", manifest.name},
              {"node_id", manifest.node_id},
              {"created_unix_ms", manifest.created_unix_ms},
              {"shard_sequences", manifest.shard_sequences},
              {"files", files},
              {"bytes", manifest.bytes},
              {"control_plane_snapshot", manifest.control_plane_snapshot.empty()
                                             ? json(nullptr)
                                             : json(manifest.control_plane_snapshot)}};
}

std::string EncodeManifest(const BackupManifest& manifest) {
  json body = ManifestBody(manifest);
  const std::string text = body.dump();
  body["checksum"] = Hex(XXH3_64bits(text.data(), text.size()));
  return body.dump(1) + "\n";
}

absl::StatusOr<BackupManifest> DecodeManifest(absl::string_view text, const std::string& where) {
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(where, ": ", kManifestFileName, " ", why));
  };
  json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return bad("is not a JSON object");
  BackupManifest manifest;
  try {
    if (body.value("format", "") != "logkv-backup") return bad("is not a logkv backup manifest");
    if (body.value("format_version", 0) != kManifestFormatVersion) {
      return bad(absl::StrCat("has format version ", body.value("format_version", 0),
                              ", this build reads ", kManifestFormatVersion));
    }
    const std::string stored_checksum = body.at("checksum").get<std::string>();
    manifest.name = body.at("name").get<std::string>();
    manifest.node_id = body.at("node_id").get<std::string>();
    manifest.created_unix_ms = body.at("created_unix_ms").get<int64_t>();
    manifest.shard_sequences = body.at("shard_sequences").get<std::vector<uint64_t>>();
    manifest.bytes = body.at("bytes").get<uint64_t>();
    if (body.at("control_plane_snapshot").is_string()) {
      manifest.control_plane_snapshot = body.at("control_plane_snapshot").get<std::string>();
    }
    for (const json& file : body.at("files")) {
      BackupFile entry;
      entry.path = file.at("path").get<std::string>();
      entry.bytes = file.at("bytes").get<uint64_t>();
      if (!absl::SimpleHexAtoi(file.at("xxh3").get<std::string>(), &entry.xxh3)) {
        return bad(absl::StrCat("has a bad checksum for ", entry.path));
      }
      if (!SafeRelativePath(entry.path)) return bad(absl::StrCat("names a bad path ", entry.path));
      manifest.files.push_back(std::move(entry));
    }
    const std::string again = ManifestBody(manifest).dump();
    if (Hex(XXH3_64bits(again.data(), again.size())) != stored_checksum) {
      return bad("does not match its checksum (damaged)");
    }
  } catch (const json::exception& error) {
    return bad(absl::StrCat("is malformed: ", error.what()));
  }
  return manifest;
}

// ---- Writing ---------------------------------------------------------------

// Checksums every file the engine hands over and keeps the list; the
// subclasses put the bytes somewhere.
class ChecksummingSink : public engine::BackupSink {
 public:
  ChecksummingSink() : state_(XXH3_createState()) {}
  ~ChecksummingSink() override { XXH3_freeState(state_); }

  absl::Status BeginFile(const std::string& relative_path, uint64_t bytes) override {
    if (!SafeRelativePath(relative_path)) {
      return absl::InternalError(absl::StrCat("bad path in a backup: ", relative_path));
    }
    current_ = BackupFile{relative_path, bytes, 0};
    written_ = 0;
    XXH3_64bits_reset(state_);
    return DoBegin(relative_path, bytes);
  }
  absl::Status BeginSealedFile(const std::string& relative_path, uint64_t bytes,
                               const std::string& source_path) override {
    if (!SafeRelativePath(relative_path)) {
      return absl::InternalError(absl::StrCat("bad path in a backup: ", relative_path));
    }
    current_ = BackupFile{relative_path, bytes, 0};
    written_ = 0;
    XXH3_64bits_reset(state_);
    return DoBeginSealed(relative_path, bytes, source_path);
  }
  absl::Status Write(absl::string_view data) override {
    if (written_ + data.size() > current_.bytes) {
      return absl::InternalError(absl::StrCat(current_.path, ": more bytes than announced"));
    }
    written_ += data.size();
    XXH3_64bits_update(state_, data.data(), data.size());
    return DoWrite(data);
  }
  absl::Status EndFile() override {
    if (written_ != current_.bytes) {
      return absl::InternalError(absl::StrCat(current_.path, ": ", written_, " bytes of ",
                                              current_.bytes));
    }
    current_.xxh3 = XXH3_64bits_digest(state_);
    files_.push_back(current_);
    return DoEnd();
  }
  absl::Status AddWhole(const std::string& relative_path, absl::string_view data) {
    if (absl::Status status = BeginFile(relative_path, data.size()); !status.ok()) return status;
    if (absl::Status status = Write(data); !status.ok()) return status;
    return EndFile();
  }

  std::vector<BackupFile>& files() { return files_; }

  // Writes the manifest (not itself listed) and makes everything durable
  // under the temporary name.
  virtual absl::Status Finish(const std::string& manifest_text) = 0;
  // Leaves nothing behind (after a failure).
  virtual void Discard() = 0;

 protected:
  virtual absl::Status DoBegin(const std::string& relative_path, uint64_t bytes) = 0;
  virtual absl::Status DoBeginSealed(const std::string& relative_path, uint64_t bytes,
                                     const std::string&) {
    return DoBegin(relative_path, bytes);
  }
  virtual absl::Status DoWrite(absl::string_view data) = 0;
  virtual absl::Status DoEnd() = 0;

 private:
  XXH3_state_t* state_;
  BackupFile current_;
  uint64_t written_ = 0;
  std::vector<BackupFile> files_;
};

class DirectorySink final : public ChecksummingSink {
 public:
  DirectorySink(std::string root, bool hard_links)
      : root_(std::move(root)), hard_links_(hard_links) {}

  uint64_t linked_files() const { return linked_files_; }
  ~DirectorySink() override {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Open() {
    if (::mkdir(root_.c_str(), 0700) != 0) return ErrnoError("cannot create", root_);
    directories_.push_back(root_);
    return absl::OkStatus();
  }
  absl::Status Finish(const std::string& manifest_text) override {
    const std::string path = absl::StrCat(root_, "/", kManifestFileName);
    if (absl::Status status = WriteFileSynced(path, manifest_text); !status.ok()) return status;
    // Deepest first, the root last: every entry durable before the rename.
    for (auto it = directories_.rbegin(); it != directories_.rend(); ++it) {
      if (absl::Status status = SyncPath(*it, /*directory=*/true); !status.ok()) return status;
    }
    return absl::OkStatus();
  }
  void Discard() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

 protected:
  absl::Status DoBegin(const std::string& relative_path, uint64_t) override {
    path_ = absl::StrCat(root_, "/", relative_path);
    if (absl::Status status = MakeParent(); !status.ok()) return status;
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return ErrnoError("cannot create", path_);
    return absl::OkStatus();
  }
  absl::Status DoBeginSealed(const std::string& relative_path, uint64_t bytes,
                             const std::string& source_path) override {
    linked_ = false;
    if (!hard_links_) return DoBegin(relative_path, bytes);
    path_ = absl::StrCat(root_, "/", relative_path);
    if (absl::Status status = MakeParent(); !status.ok()) return status;
    // A segment compaction removed meanwhile (ENOENT), or another file
    // system (EXDEV): copied instead. A link to a file of another size is
    // no link to the segment of the cut.
    struct stat info;
    if (::link(source_path.c_str(), path_.c_str()) == 0) {
      if (::stat(path_.c_str(), &info) == 0 && static_cast<uint64_t>(info.st_size) == bytes) {
        linked_ = true;
        ++linked_files_;
        return absl::OkStatus();
      }
      ::unlink(path_.c_str());
    }
    return DoBegin(relative_path, bytes);
  }
  absl::Status DoWrite(absl::string_view data) override {
    if (linked_) return absl::OkStatus();  // checksummed only
    return WriteAll(fd_, data, path_);
  }
  absl::Status DoEnd() override {
    if (linked_) {
      linked_ = false;
      return absl::OkStatus();  // the segment was synced when it was sealed
    }
    absl::Status status = ::fsync(fd_) == 0 ? absl::OkStatus() : ErrnoError("cannot sync", path_);
    ::close(fd_);
    fd_ = -1;
    return status;
  }

 private:
  absl::Status MakeParent() {
    const std::string parent = fs::path(path_).parent_path().string();
    if (std::find(directories_.begin(), directories_.end(), parent) != directories_.end()) {
      return absl::OkStatus();
    }
    if (absl::Status status = MakePrivateDirectories(parent); !status.ok()) return status;
    directories_.push_back(parent);
    return absl::OkStatus();
  }

  const std::string root_;
  const bool hard_links_;
  bool linked_ = false;
  uint64_t linked_files_ = 0;
  std::vector<std::string> directories_;
  std::string path_;
  int fd_ = -1;
};

class ArchiveSink final : public ChecksummingSink {
 public:
  ArchiveSink(std::string path, int level) : path_(std::move(path)), level_(level) {}
  ~ArchiveSink() override {
    if (archive_ != nullptr) archive_write_free(archive_);
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Open() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return ErrnoError("cannot create", path_);
    archive_ = archive_write_new();
    if (archive_ == nullptr) return absl::ResourceExhaustedError("archive_write_new failed");
    if (archive_write_set_format_pax_restricted(archive_) != ARCHIVE_OK ||
        archive_write_add_filter_zstd(archive_) != ARCHIVE_OK ||
        archive_write_set_filter_option(archive_, "zstd", "compression-level",
                                        absl::StrCat(level_).c_str()) != ARCHIVE_OK ||
        // The last block is padded to the block size, not flushed short.
        archive_write_set_bytes_in_last_block(archive_, 1) != ARCHIVE_OK ||
        archive_write_open_fd(archive_, fd_) != ARCHIVE_OK) {
      return Error("cannot start");
    }
    return absl::OkStatus();
  }
  absl::Status Finish(const std::string& manifest_text) override {
    if (absl::Status status = Header(kManifestFileName, manifest_text.size()); !status.ok()) {
      return status;
    }
    if (absl::Status status = DoWrite(manifest_text); !status.ok()) return status;
    if (archive_write_finish_entry(archive_) != ARCHIVE_OK) return Error("cannot finish");
    if (archive_write_close(archive_) != ARCHIVE_OK) return Error("cannot finish");
    if (::fsync(fd_) != 0) return ErrnoError("cannot sync", path_);
    return absl::OkStatus();
  }
  void Discard() override {
    if (archive_ != nullptr) archive_write_free(archive_);
    archive_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }

 protected:
  absl::Status DoBegin(const std::string& relative_path, uint64_t bytes) override {
    return Header(relative_path, bytes);
  }
  absl::Status DoWrite(absl::string_view data) override {
    while (!data.empty()) {
      const la_ssize_t n = archive_write_data(archive_, data.data(), data.size());
      if (n <= 0) return Error("cannot write");
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }
  absl::Status DoEnd() override {
    return archive_write_finish_entry(archive_) == ARCHIVE_OK ? absl::OkStatus()
                                                              : Error("cannot write");
  }

 private:
  absl::Status Header(const std::string& relative_path, uint64_t bytes) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, relative_path.c_str());
    archive_entry_set_size(entry, static_cast<la_int64_t>(bytes));
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0600);
    archive_entry_set_mtime(entry, absl::ToUnixSeconds(absl::Now()), 0);
    const int result = archive_write_header(archive_, entry);
    archive_entry_free(entry);
    return result == ARCHIVE_OK ? absl::OkStatus() : Error("cannot write");
  }
  absl::Status Error(absl::string_view what) {
    const char* message = archive_ != nullptr ? archive_error_string(archive_) : nullptr;
    return absl::InternalError(
        absl::StrCat(what, " ", path_, ": ", message != nullptr ? message : "libarchive error"));
  }

  const std::string path_;
  const int level_;
  int fd_ = -1;
  struct archive* archive_ = nullptr;
};

// ---- Reading -----------------------------------------------------------------

// Every file of a backup, in the order stored, in chunks; the manifest is
// handed over by name like any other file.
class FileVisitor {
 public:
  virtual ~FileVisitor() = default;
  virtual absl::Status Begin(const std::string& relative_path, uint64_t bytes) = 0;
  virtual absl::Status Data(absl::string_view chunk) = 0;
  virtual absl::Status End() = 0;
};

// The manifests, the backup's and the engine's, are read into memory: a
// file of either name larger than this is refused before any of it is read
// (an archive of some kilobytes can inflate to gigabytes).
constexpr uint64_t kMaxManifestBytes = 64u << 20;

absl::Status CheckManifestSize(const std::string& where, const std::string& name,
                               uint64_t bytes) {
  if ((name == kManifestFileName || name == kEngineManifest) && bytes > kMaxManifestBytes) {
    return absl::DataLossError(absl::StrCat(where, ": ", name, " is ", bytes,
                                            " bytes, more than a manifest may be (",
                                            kMaxManifestBytes >> 20, " MiB)"));
  }
  return absl::OkStatus();
}

absl::Status ReadArchive(const std::string& path, FileVisitor* visitor) {
  struct archive* archive = archive_read_new();
  if (archive == nullptr) return absl::ResourceExhaustedError("archive_read_new failed");
  absl::Cleanup free_archive = [archive] { archive_read_free(archive); };
  archive_read_support_filter_zstd(archive);
  archive_read_support_format_tar(archive);
  auto error = [&](absl::string_view what) {
    const char* message = archive_error_string(archive);
    return absl::DataLossError(absl::StrCat(path, ": ", what, ": ",
                                            message != nullptr ? message : "unreadable"));
  };
  if (archive_read_open_filename(archive, path.c_str(), kReadChunkBytes) != ARCHIVE_OK) {
    if (!fs::exists(path)) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return error("not a backup archive");
  }
  std::string buffer(kReadChunkBytes, '\0');
  while (true) {
    archive_entry* entry = nullptr;
    const int result = archive_read_next_header(archive, &entry);
    if (result == ARCHIVE_EOF) break;
    if (result != ARCHIVE_OK) return error("damaged");
    if (archive_entry_filetype(entry) != AE_IFREG || archive_entry_pathname(entry) == nullptr) {
      return absl::DataLossError(absl::StrCat(path, ": holds an entry that is no file"));
    }
    const std::string name = archive_entry_pathname(entry);
    if (!SafeRelativePath(name)) {
      return absl::DataLossError(absl::StrCat(path, ": holds a bad path ", name));
    }
    const uint64_t size = static_cast<uint64_t>(archive_entry_size(entry));
    if (absl::Status status = CheckManifestSize(path, name, size); !status.ok()) return status;
    if (absl::Status status = visitor->Begin(name, size); !status.ok()) return status;
    uint64_t read = 0;
    while (true) {
      const la_ssize_t n = archive_read_data(archive, buffer.data(), buffer.size());
      if (n < 0) return error(absl::StrCat("damaged in ", name));
      if (n == 0) break;
      read += static_cast<uint64_t>(n);
      if (absl::Status status = visitor->Data(absl::string_view(buffer.data(), n)); !status.ok()) {
        return status;
      }
    }
    if (read != size) {
      return absl::DataLossError(absl::StrCat(path, ": ", name, " is cut short"));
    }
    if (absl::Status status = visitor->End(); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  std::string out;
  char buffer[64 << 10];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status status = ErrnoError("cannot read", path);
      ::close(fd);
      return status;
    }
    if (n == 0) break;
    out.append(buffer, static_cast<size_t>(n));
    if (out.size() > kMaxManifestBytes) {
      ::close(fd);
      return absl::DataLossError(absl::StrCat(path, " is too large for a manifest"));
    }
  }
  ::close(fd);
  return out;
}

// A directory backup: the files its manifest names (in its order), then the
// manifest, then a file found on disk that it does not name (so a verify
// reports it).
absl::Status ReadDirectory(const std::string& path, FileVisitor* visitor) {
  auto text = ReadSmallFile(absl::StrCat(path, "/", kManifestFileName));
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::DataLossError(absl::StrCat(path, ": no ", kManifestFileName,
                                              " (not a backup, or one cut short)"));
    }
    return text.status();
  }
  auto manifest = DecodeManifest(*text, path);
  if (!manifest.ok()) return manifest.status();
  std::vector<std::string> listed;
  std::string buffer(kReadChunkBytes, '\0');
  for (const BackupFile& file : manifest->files) {
    listed.push_back(file.path);
    const std::string file_path = absl::StrCat(path, "/", file.path);
    const int fd = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::DataLossError(absl::StrCat(path, ": ", file.path, " is missing"));
    absl::Cleanup close_fd = [fd] { ::close(fd); };
    struct stat info;
    if (::fstat(fd, &info) != 0) return ErrnoError("cannot stat", file_path);
    if (absl::Status status =
            CheckManifestSize(path, file.path, static_cast<uint64_t>(info.st_size));
        !status.ok()) {
      return status;
    }
    if (absl::Status status = visitor->Begin(file.path, static_cast<uint64_t>(info.st_size));
        !status.ok()) {
      return status;
    }
    while (true) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("cannot read", file_path);
      if (n == 0) break;
      if (absl::Status status = visitor->Data(absl::string_view(buffer.data(), n));
          !status.ok()) {
        return status;
      }
    }
    if (absl::Status status = visitor->End(); !status.ok()) return status;
  }
  if (absl::Status status = visitor->Begin(kManifestFileName, text->size()); !status.ok()) {
    return status;
  }
  if (absl::Status status = visitor->Data(*text); !status.ok()) return status;
  if (absl::Status status = visitor->End(); !status.ok()) return status;
  std::error_code error;
  for (auto it = fs::recursive_directory_iterator(path, error);
       !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (!it->is_regular_file()) continue;
    const std::string relative = fs::relative(it->path(), path).string();
    if (relative == kManifestFileName) continue;
    if (std::find(listed.begin(), listed.end(), relative) == listed.end()) {
      return absl::DataLossError(absl::StrCat(path, ": ", relative,
                                              " is not in the manifest"));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadBackup(const std::string& path, FileVisitor* visitor) {
  std::error_code error;
  if (fs::is_directory(path, error)) return ReadDirectory(path, visitor);
  if (!fs::exists(path, error)) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  return ReadArchive(path, visitor);
}

// Checks every file against the manifest as it streams by; optionally
// hands the bytes on (a restore writes them).
class CheckingVisitor : public FileVisitor {
 public:
  explicit CheckingVisitor(std::string where) : where_(std::move(where)), state_(XXH3_createState()) {}
  ~CheckingVisitor() override { XXH3_freeState(state_); }

  absl::Status Begin(const std::string& relative_path, uint64_t bytes) override {
    current_ = BackupFile{relative_path, bytes, 0};
    is_manifest_ = relative_path == kManifestFileName;
    manifest_text_.clear();
    XXH3_64bits_reset(state_);
    if (is_manifest_) return absl::OkStatus();
    if (seen_.contains(relative_path)) {
      return absl::DataLossError(absl::StrCat(where_, ": ", relative_path, " is there twice"));
    }
    return OnBegin(relative_path, bytes);
  }
  absl::Status Data(absl::string_view chunk) override {
    if (is_manifest_) {
      manifest_text_.append(chunk.data(), chunk.size());
      return absl::OkStatus();
    }
    XXH3_64bits_update(state_, chunk.data(), chunk.size());
    return OnData(chunk);
  }
  absl::Status End() override {
    if (is_manifest_) {
      auto manifest = DecodeManifest(manifest_text_, where_);
      if (!manifest.ok()) return manifest.status();
      manifest_ = *std::move(manifest);
      return absl::OkStatus();
    }
    current_.xxh3 = XXH3_64bits_digest(state_);
    seen_[current_.path] = current_;
    return OnEnd();
  }

  // After the last file: the manifest was there and every file matches it.
  absl::StatusOr<BackupManifest> Check() {
    if (!manifest_.has_value()) {
      return absl::DataLossError(absl::StrCat(where_, ": no ", kManifestFileName,
                                              " (not a backup, or one cut short)"));
    }
    for (const BackupFile& file : manifest_->files) {
      auto it = seen_.find(file.path);
      if (it == seen_.end()) {
        return absl::DataLossError(absl::StrCat(where_, ": ", file.path, " is missing"));
      }
      if (it->second.bytes != file.bytes) {
        return absl::DataLossError(absl::StrCat(where_, ": ", file.path, " has ",
                                                it->second.bytes, " bytes, the manifest says ",
                                                file.bytes));
      }
      if (it->second.xxh3 != file.xxh3) {
        return absl::DataLossError(
            absl::StrCat(where_, ": ", file.path, " does not match its checksum (damaged)"));
      }
    }
    if (seen_.size() != manifest_->files.size()) {
      for (const auto& [path, file] : seen_) {
        const bool listed =
            std::any_of(manifest_->files.begin(), manifest_->files.end(),
                        [&path = path](const BackupFile& f) { return f.path == path; });
        if (!listed) {
          return absl::DataLossError(absl::StrCat(where_, ": ", path, " is not in the manifest"));
        }
      }
    }
    return *manifest_;
  }

 protected:
  virtual absl::Status OnBegin(const std::string&, uint64_t) { return absl::OkStatus(); }
  virtual absl::Status OnData(absl::string_view) { return absl::OkStatus(); }
  virtual absl::Status OnEnd() { return absl::OkStatus(); }

 private:
  const std::string where_;
  XXH3_state_t* state_;
  BackupFile current_;
  bool is_manifest_ = false;
  std::string manifest_text_;
  std::optional<BackupManifest> manifest_;
  absl::flat_hash_map<std::string, BackupFile> seen_;
};

// Writes every file but the engine's MANIFEST into the data directory as
// it streams by (the MANIFEST is kept for last).
class RestoringVisitor final : public CheckingVisitor {
 public:
  RestoringVisitor(std::string where, std::string data_dir)
      : CheckingVisitor(std::move(where)), data_dir_(std::move(data_dir)) {}
  ~RestoringVisitor() override {
    if (fd_ >= 0) ::close(fd_);
  }

  const std::string& engine_manifest() const { return engine_manifest_; }
  const std::vector<std::string>& directories() const { return directories_; }

 protected:
  absl::Status OnBegin(const std::string& relative_path, uint64_t) override {
    keep_in_memory_ = relative_path == kEngineManifest;
    if (keep_in_memory_) return absl::OkStatus();
    path_ = absl::StrCat(data_dir_, "/", relative_path);
    const std::string parent = fs::path(path_).parent_path().string();
    if (std::find(directories_.begin(), directories_.end(), parent) == directories_.end()) {
      if (absl::Status status = MakePrivateDirectories(parent); !status.ok()) return status;
      directories_.push_back(parent);
    }
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) return ErrnoError("cannot create", path_);
    return absl::OkStatus();
  }
  absl::Status OnData(absl::string_view chunk) override {
    if (keep_in_memory_) {
      engine_manifest_.append(chunk.data(), chunk.size());
      return absl::OkStatus();
    }
    return WriteAll(fd_, chunk, path_);
  }
  absl::Status OnEnd() override {
    if (keep_in_memory_) return absl::OkStatus();
    absl::Status status = ::fsync(fd_) == 0 ? absl::OkStatus() : ErrnoError("cannot sync", path_);
    ::close(fd_);
    fd_ = -1;
    return status;
  }

 private:
  const std::string data_dir_;
  bool keep_in_memory_ = false;
  std::string engine_manifest_;
  std::vector<std::string> directories_;
  std::string path_;
  int fd_ = -1;
};

std::string DefaultName() {
  return absl::StrCat(kNamePrefix,
                      absl::FormatTime("%Y%m%dT%H%M%E3SZ", absl::Now(), absl::UTCTimeZone()));
}

uint64_t StoredBytes(const std::string& path) {
  std::error_code error;
  if (!fs::is_directory(path, error)) {
    const uintmax_t size = fs::file_size(path, error);
    return error ? 0 : static_cast<uint64_t>(size);
  }
  uint64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(path, error);
       !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (it->is_regular_file(error)) total += static_cast<uint64_t>(it->file_size(error));
  }
  return total;
}

// Only the manifest of an archive: the other entries are skipped over.
absl::StatusOr<BackupManifest> ReadManifestOnly(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) {
    auto text = ReadSmallFile(absl::StrCat(path, "/", kManifestFileName));
    if (!text.ok()) return text.status();
    return DecodeManifest(*text, path);
  }
  class ManifestOnly final : public FileVisitor {
   public:
    absl::Status Begin(const std::string& relative_path, uint64_t) override {
      is_manifest_ = relative_path == kManifestFileName;
      if (is_manifest_) text_.clear();
      return absl::OkStatus();
    }
    absl::Status Data(absl::string_view chunk) override {
      if (is_manifest_) text_.append(chunk.data(), chunk.size());
      return absl::OkStatus();
    }
    absl::Status End() override {
      if (is_manifest_) found_ = true;
      return absl::OkStatus();
    }
    bool is_manifest_ = false;
    bool found_ = false;
    std::string text_;
  } visitor;
  if (absl::Status status = ReadArchive(path, &visitor); !status.ok()) return status;
  if (!visitor.found_) {
    return absl::DataLossError(absl::StrCat(path, ": no ", kManifestFileName));
  }
  return DecodeManifest(visitor.text_, path);
}

}  // namespace

absl::StatusOr<BackupFormat> ParseBackupFormat(absl::string_view text) {
  if (text == "archive") return BackupFormat::kArchive;
  if (text == "directory") return BackupFormat::kDirectory;
  return absl::InvalidArgumentError(
      absl::StrCat("backup format '", text, "' is not archive or directory"));
}

const char* BackupFormatName(BackupFormat format) {
  return format == BackupFormat::kArchive ? "archive" : "directory";
}

absl::StatusOr<CreatedBackup> CreateBackup(engine::Engine* engine, const CreateOptions& options) {
  const absl::Time start = absl::Now();
  if (options.dir.empty()) return absl::FailedPreconditionError("no backup directory is set");
  if (options.zstd_level < 1 || options.zstd_level > 19) {
    return absl::InvalidArgumentError("the zstd level must be in [1, 19]");
  }
  const std::string name = options.name.empty() ? DefaultName() : options.name;
  if (!absl::StartsWith(name, kNamePrefix) || !SafeRelativePath(name) ||
      name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("a backup's name must start with ", kNamePrefix, " and name no directory"));
  }
  if (absl::Status status = MakePrivateDirectories(options.dir); !status.ok()) return status;
  const bool archive = options.format == BackupFormat::kArchive;
  if (archive && options.hard_links) {
    return absl::InvalidArgumentError("hard links need the directory format");
  }
  const std::string final_path =
      absl::StrCat(options.dir, "/", name, archive ? kArchiveSuffix : "");
  const std::string temporary = final_path + kTemporarySuffix;
  std::error_code error;
  if (fs::exists(final_path, error) || fs::exists(temporary, error)) {
    return absl::AlreadyExistsError(absl::StrCat(final_path, " exists already"));
  }

  std::unique_ptr<ChecksummingSink> sink;
  if (archive) {
    auto archive_sink = std::make_unique<ArchiveSink>(temporary, options.zstd_level);
    absl::Status status = archive_sink->Open();
    sink = std::move(archive_sink);
    if (!status.ok()) {
      sink->Discard();
      return status;
    }
  } else {
    auto directory_sink = std::make_unique<DirectorySink>(temporary, options.hard_links);
    if (absl::Status status = directory_sink->Open(); !status.ok()) return status;
    sink = std::move(directory_sink);
  }
  absl::Cleanup discard = [&sink] { sink->Discard(); };

  engine::BackupOptions engine_options;
  engine_options.bytes_per_second = options.bytes_per_second;
  engine_options.progress = options.progress;
  engine_options.cancel = options.cancel;
  absl::StatusOr<engine::BackupCut> cut = engine->Backup(sink.get(), engine_options);
  if (!cut.ok()) return cut.status();
  for (const ExtraFile& extra : options.extra_files) {
    if (absl::Status status = sink->AddWhole(extra.relative_path, extra.contents); !status.ok()) {
      return status;
    }
  }

  BackupManifest manifest;
  manifest.name = name;
  manifest.node_id = options.node_id;
  manifest.created_unix_ms = cut->unix_ms;
  manifest.shard_sequences = cut->shard_sequences;
  manifest.files = sink->files();
  for (const BackupFile& file : manifest.files) manifest.bytes += file.bytes;
  manifest.control_plane_snapshot = options.control_plane_snapshot;
  if (absl::Status status = sink->Finish(EncodeManifest(manifest)); !status.ok()) return status;
  // Complete and durable under the temporary name: now it may look complete.
  if (::rename(temporary.c_str(), final_path.c_str()) != 0) {
    return ErrnoError("cannot rename to", final_path);
  }
  std::move(discard).Cancel();
  if (absl::Status status = SyncPath(options.dir, /*directory=*/true); !status.ok()) return status;

  CreatedBackup created;
  created.path = final_path;
  created.manifest = std::move(manifest);
  created.stored_bytes = StoredBytes(final_path);
  created.duration = absl::Now() - start;
  return created;
}

absl::StatusOr<std::vector<ListedBackup>> ListBackups(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(dir, " is not a directory"));
  }
  std::vector<ListedBackup> backups;
  for (auto it = fs::directory_iterator(dir, error);
       !error && it != fs::directory_iterator(); it.increment(error)) {
    const std::string file_name = it->path().filename().string();
    if (!absl::StartsWith(file_name, kNamePrefix)) continue;
    ListedBackup backup;
    backup.path = it->path().string();
    std::string name = file_name;
    const bool temporary = absl::EndsWith(name, kTemporarySuffix);
    if (temporary) name.resize(name.size() - std::strlen(kTemporarySuffix));
    const bool is_archive = absl::EndsWith(name, kArchiveSuffix);
    if (is_archive) name.resize(name.size() - std::strlen(kArchiveSuffix));
    backup.name = name;
    backup.format = is_archive ? BackupFormat::kArchive : BackupFormat::kDirectory;
    backup.stored_bytes = StoredBytes(backup.path);
    if (temporary) {
      backup.error = "incomplete: cut short while it was written";
    } else {
      auto manifest = ReadManifestOnly(backup.path);
      if (manifest.ok()) {
        backup.complete = true;
        backup.manifest = *std::move(manifest);
      } else {
        backup.error = std::string(manifest.status().message());
      }
    }
    backups.push_back(std::move(backup));
  }
  if (error) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  std::sort(backups.begin(), backups.end(),
            [](const ListedBackup& a, const ListedBackup& b) { return a.path < b.path; });
  return backups;
}

absl::StatusOr<BackupManifest> VerifyBackup(const std::string& path) {
  if (absl::EndsWith(path, kTemporarySuffix)) {
    return absl::DataLossError(absl::StrCat(path, ": incomplete (cut short while written)"));
  }
  CheckingVisitor visitor(path);
  if (absl::Status status = ReadBackup(path, &visitor); !status.ok()) return status;
  return visitor.Check();
}

absl::StatusOr<BackupManifest> RestoreBackup(const std::string& path,
                                             const std::string& data_dir) {
  if (absl::EndsWith(path, kTemporarySuffix)) {
    return absl::DataLossError(absl::StrCat(path, ": incomplete (cut short while written)"));
  }
  std::error_code error;
  if (fs::exists(data_dir, error)) {
    if (!fs::is_directory(data_dir, error)) {
      return absl::FailedPreconditionError(absl::StrCat(data_dir, " is not a directory"));
    }
    if (!fs::is_empty(data_dir, error)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to restore into ", data_dir,
          ": it is not empty (restore into an empty or new directory)"));
    }
  } else {
    if (absl::Status status = MakePrivateDirectories(data_dir); !status.ok()) return status;
  }
  // On failure the directory is emptied again (it was empty before).
  auto empty_again = [&data_dir] {
    std::error_code ignored;
    for (auto it = fs::directory_iterator(data_dir, ignored);
         !ignored && it != fs::directory_iterator(); it.increment(ignored)) {
      std::error_code also_ignored;
      fs::remove_all(it->path(), also_ignored);
    }
  };
  RestoringVisitor visitor(path, data_dir);
  absl::Status status = ReadBackup(path, &visitor);
  absl::StatusOr<BackupManifest> manifest =
      status.ok() ? visitor.Check() : absl::StatusOr<BackupManifest>(status);
  if (manifest.ok() && visitor.engine_manifest().empty()) {
    manifest = absl::DataLossError(absl::StrCat(path, ": holds no engine MANIFEST"));
  }
  if (manifest.ok()) {
    for (const std::string& directory : visitor.directories()) {
      if (status = SyncPath(directory, /*directory=*/true); !status.ok()) break;
    }
    if (status.ok()) {
      // Last: until it is there the engine refuses the directory.
      status = WriteFileSynced(absl::StrCat(data_dir, "/", kEngineManifest),
                               visitor.engine_manifest());
    }
    if (status.ok()) status = SyncPath(data_dir, /*directory=*/true);
    if (!status.ok()) manifest = status;
  }
  if (!manifest.ok()) empty_again();
  return manifest;
}

absl::StatusOr<std::vector<std::string>> PruneBackups(const std::string& dir, size_t keep) {
  std::vector<std::string> removed;
  if (keep == 0) return removed;
  auto backups = ListBackups(dir);
  if (!backups.ok()) return backups.status();
  std::vector<const ListedBackup*> complete;
  for (const ListedBackup& backup : *backups) {
    if (backup.complete) complete.push_back(&backup);
  }
  std::sort(complete.begin(), complete.end(), [](const ListedBackup* a, const ListedBackup* b) {
    return a->manifest.created_unix_ms < b->manifest.created_unix_ms;
  });
  for (size_t i = 0; i + keep < complete.size(); ++i) {
    std::error_code error;
    fs::remove_all(complete[i]->path, error);
    if (error) {
      return absl::InternalError(
          absl::StrCat("cannot remove ", complete[i]->path, ": ", error.message()));
    }
    removed.push_back(complete[i]->path);
  }
  if (!removed.empty()) {
    if (absl::Status status = SyncPath(dir, /*directory=*/true); !status.ok()) return status;
  }
  return removed;
}

absl::StatusOr<std::vector<std::string>> RemoveIncompleteBackups(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code error;
  if (!fs::is_directory(dir, error)) return removed;
  for (auto it = fs::directory_iterator(dir, error);
       !error && it != fs::directory_iterator(); it.increment(error)) {
    const std::string file_name = it->path().filename().string();
    if (!absl::StartsWith(file_name, kNamePrefix) ||
        !absl::EndsWith(file_name, kTemporarySuffix)) {
      continue;
    }
    std::error_code remove_error;
    fs::remove_all(it->path(), remove_error);
    if (remove_error) {
      return absl::InternalError(
          absl::StrCat("cannot remove ", it->path().string(), ": ", remove_error.message()));
    }
    removed.push_back(it->path().string());
  }
  return removed;
}

}  // namespace logkv::server::backup
