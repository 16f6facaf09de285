// SPDX-License-Identifier: Apache-2.0
#include "store/kv_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "store/kv_store_internal.h"

namespace iommu::store {
namespace {

constexpr absl::string_view kMarkerPrefix = "iommu-kv-store engine=";
constexpr char kMarkerTmpSuffix[] = ".tmp";

absl::string_view SV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Names in dir (not "." or ".."), or an errno.
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return internal::ErrnoError("kv", "cannot list directory", dir, errno);
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return internal::ErrnoError("kv", "cannot write", path, errno);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status FsyncPath(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return internal::ErrnoError("kv", "cannot open", path, errno);
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) return internal::ErrnoError("kv", "cannot fsync", path, err);
  return absl::OkStatus();
}

std::string ParentOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes the marker for engine through a temporary file and a rename, so a
// crash leaves either no marker or a whole one.
absl::Status WriteMarker(const std::string& dir, const std::string& marker, KvEngine engine) {
  const std::string tmp = marker + kMarkerTmpSuffix;
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return internal::ErrnoError("kv", "cannot create", tmp, errno);
  absl::Status status = WriteAll(fd, absl::StrCat(kMarkerPrefix, KvEngineName(engine), "\n"), tmp);
  if (status.ok() && fdatasync(fd) != 0) {
    status = internal::ErrnoError("kv", "cannot fdatasync", tmp, errno);
  }
  close(fd);
  if (status.ok() && rename(tmp.c_str(), marker.c_str()) != 0) {
    status = internal::ErrnoError("kv", "cannot rename to", marker, errno);
  }
  if (!status.ok()) {
    unlink(tmp.c_str());
    return status;
  }
  return FsyncPath(dir);
}

}  // namespace

absl::string_view KvEngineName(KvEngine engine) {
  switch (engine) {
    case KvEngine::kLmdb:
      return "lmdb";
    case KvEngine::kSqlite:
      return "sqlite";
    case KvEngine::kRocksdb:
      return "rocksdb";
  }
  return "unknown";
}

std::optional<KvEngine> ParseKvEngine(absl::string_view name) {
  for (KvEngine e : {KvEngine::kLmdb, KvEngine::kSqlite, KvEngine::kRocksdb}) {
    if (KvEngineName(e) == name) return e;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<KvStore>> KvStore::Open(const KvOptions& options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("kv: KvOptions.dir is empty");
  internal::StoreDir::OwnsFile owns = nullptr;
  switch (options.engine) {
    case KvEngine::kLmdb:
      owns = internal::LmdbOwnsFile;
      break;
    case KvEngine::kSqlite:
      owns = internal::SqliteOwnsFile;
      break;
    case KvEngine::kRocksdb:
      owns = internal::RocksdbOwnsFile;
      break;
  }
  if (owns == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("kv: KvOptions.engine has no engine (value ",
                                                   static_cast<int>(options.engine), ")"));
  }
  auto dir = internal::StoreDir::Acquire(options.dir, options.engine, owns);
  if (!dir.ok()) return dir.status();
  switch (options.engine) {
    case KvEngine::kLmdb:
      return internal::OpenLmdb(options, *std::move(dir));
    case KvEngine::kSqlite:
      return internal::OpenSqlite(options, *std::move(dir));
    case KvEngine::kRocksdb:
      return internal::OpenRocksdb(options, *std::move(dir));
  }
  return absl::InternalError("kv: unreachable");
}

namespace internal {

absl::Status ErrnoError(absl::string_view engine, absl::string_view what, std::string_view path,
                        int err) {
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(engine, ": ", what, " ", SV(path), ": ", std::strerror(err)));
}

absl::StatusOr<std::unique_ptr<StoreDir>> StoreDir::Acquire(const std::string& dir, KvEngine engine,
                                                            OwnsFile owns) {
  const absl::string_view name = KvEngineName(engine);
  if (mkdir(dir.c_str(), 0700) == 0) {
    if (absl::Status s = FsyncPath(ParentOf(dir)); !s.ok()) return s;
  } else if (errno != EEXIST) {
    return ErrnoError(name, "cannot create directory", dir, errno);
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return ErrnoError(name, "cannot stat", dir, errno);
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, ": KvOptions.dir ", dir, " is not a directory"));
  }
  const std::string marker = dir + "/" + kMarkerFileName;
  if (access(marker.c_str(), F_OK) != 0) {
    if (errno != ENOENT) return ErrnoError(name, "cannot access", marker, errno);
    // No marker: only an empty directory (or one a crash left a temporary
    // marker in) becomes a store.
    auto names = ListDir(dir);
    if (!names.ok()) return names.status();
    for (const std::string& n : *names) {
      if (n == absl::StrCat(kMarkerFileName, kMarkerTmpSuffix)) {
        unlink((dir + "/" + n).c_str());
        continue;
      }
      return absl::FailedPreconditionError(
          absl::StrCat(name, ": ", dir, "/", n, " is in the store directory but there is no ",
                       marker, " (the directory is not a kv store; refusing to use it)"));
    }
    if (absl::Status s = WriteMarker(dir, marker, engine); !s.ok()) return s;
  }
  const int fd = open(marker.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(name, "cannot open", marker, errno);
  std::unique_ptr<StoreDir> held(new StoreDir(dir, fd));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, ": ", dir, " is open by another KvStore (flock on ", marker, ")"));
    }
    return ErrnoError(name, "cannot flock", marker, errno);
  }
  char buf[128];
  ssize_t n = pread(fd, buf, sizeof(buf), 0);
  if (n < 0) return ErrnoError(name, "cannot read", marker, errno);
  std::string_view content(buf, static_cast<size_t>(n));
  if (!content.empty() && content.back() == '\n') content.remove_suffix(1);
  if (!absl::StartsWith(SV(content), kMarkerPrefix)) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, ": ", marker, " is not a kv store marker (content \"", SV(content), "\")"));
  }
  const std::string_view made_by = content.substr(kMarkerPrefix.size());
  if (SV(made_by) != name) {
    return absl::FailedPreconditionError(absl::StrCat(name, ": ", marker, " says ", dir,
                                                      " holds a ", SV(made_by), " store, not a ",
                                                      name, " store"));
  }
  auto names = ListDir(dir);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names) {
    if (n == kMarkerFileName || owns(n)) continue;
    return absl::FailedPreconditionError(absl::StrCat(name, ": ", dir, "/", n,
                                                      " is not a file of a ", name,
                                                      " store (refusing to open ", dir, ")"));
  }
  return held;
}

StoreDir::~StoreDir() { close(lock_fd_); }

std::string StoreDir::Path(std::string_view name) const {
  return absl::StrCat(dir_, "/", SV(name));
}

std::vector<std::string> StoreDir::Files() const {
  std::vector<std::string> files;
  auto names = ListDir(dir_);
  if (!names.ok()) return files;
  for (const std::string& n : *names) {
    std::string path = Path(n);
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) files.push_back(std::move(path));
  }
  return files;
}

uint64_t StoreDir::SizeBytes() const {
  uint64_t total = 0;
  for (const std::string& path : Files()) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

absl::Status StoreDir::SyncDir() const { return FsyncPath(dir_); }

absl::Status GroupSync::Wait(absl::string_view engine, uint64_t seq,
                             const std::atomic<uint64_t>& committed,
                             const std::function<absl::Status()>& sync) {
  if (const uint64_t c = committed.load(std::memory_order_acquire); seq > c) {
    return absl::InvalidArgumentError(
        absl::StrCat(engine, ": WaitDurable(", seq, "): no such commit yet (the last is ", c, ")"));
  }
  absl::MutexLock lock(&mu_);
  while (true) {
    if (durable_ >= seq) return absl::OkStatus();
    if (!syncing_) break;
    cv_.Wait(&mu_);
  }
  // Leader: everything committed before the sync starts is covered by it.
  syncing_ = true;
  const uint64_t target = committed.load(std::memory_order_acquire);
  mu_.Unlock();
  absl::Status status = sync();
  mu_.Lock();
  syncing_ = false;
  ++syncs_;
  if (status.ok()) durable_ = std::max(durable_, target);
  cv_.SignalAll();
  return status;  // target >= seq, so on success seq is durable.
}

uint64_t GroupSync::syncs() const {
  absl::MutexLock lock(&mu_);
  return syncs_;
}

absl::Status ValidateWrites(absl::string_view engine, absl::Span<const KvWrite> writes) {
  for (size_t i = 0; i < writes.size(); ++i) {
    const KvWrite& w = writes[i];
    if (w.key.empty() || w.key.size() > kMaxKeyBytes) {
      return absl::InvalidArgumentError(absl::StrCat(engine, ": Commit: writes[", i, "].key has ",
                                                     w.key.size(), " bytes (must be 1..",
                                                     kMaxKeyBytes, "); nothing written"));
    }
    if (w.value.has_value() && w.value->size() > kMaxValueBytes) {
      return absl::InvalidArgumentError(absl::StrCat(engine, ": Commit: writes[", i, "].value has ",
                                                     w.value->size(), " bytes (at most ",
                                                     kMaxValueBytes, "); nothing written"));
    }
  }
  return absl::OkStatus();
}

std::optional<std::string> PrefixSuccessor(std::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    if (static_cast<unsigned char>(s.back()) != 0xff) {
      s.back() = static_cast<char>(static_cast<unsigned char>(s.back()) + 1);
      return s;
    }
    s.pop_back();
  }
  return std::nullopt;
}

}  // namespace internal
}  // namespace iommu::store
