// SPDX-License-Identifier: Apache-2.0
// SQLite engine: one table kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT
// ROWID in WAL mode with synchronous=NORMAL: commits append to the WAL with
// write() and do not sync; SQLite's own checkpoints sync the WAL before and
// the database after copying, before the WAL is reused, so the database is
// never left half-checkpointed by a power loss. kPowerLoss: the group-commit
// leader fdatasyncs the WAL file (every completed commit is in it or in the
// synced database file).
//
// One writer connection guarded by write_mu_; reads use a pool of reader
// connections (one per concurrent reader), each with its prepared statements.

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "store/kv_store_internal.h"

namespace iommu::store::internal {
namespace {

constexpr absl::string_view kEngine = "sqlite";
constexpr char kDbName[] = "kv.sqlite3";
constexpr int kBusyTimeoutMs = 10000;

absl::StatusCode CodeOf(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

// A connection and the statements prepared on it. Used by one thread at a
// time (the owner serialises).
class Connection {
 public:
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    for (sqlite3_stmt* s : stmts_) sqlite3_finalize(s);
    if (db_ != nullptr) sqlite3_close(db_);
  }

  absl::Status Open(const std::string& path, bool create) {
    const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) |
                      SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_PRIVATECACHE;
    path_ = path;
    const int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
    if (rc != SQLITE_OK) return Error("sqlite3_open_v2", rc);
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    return absl::OkStatus();
  }

  absl::Status Exec(const char* sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return absl::OkStatus();
    std::string text = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return absl::Status(CodeOf(rc), absl::StrCat("sqlite: \"", sql, "\" on ", path_, ": ", text));
  }

  // The first column of the first row of sql, as text.
  absl::StatusOr<std::string> QueryText(const char* sql) {
    auto stmt = Prepare(sql);
    if (!stmt.ok()) return stmt.status();
    const int rc = sqlite3_step(*stmt);
    std::string text;
    if (rc == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(*stmt, 0);
      if (t != nullptr) text = reinterpret_cast<const char*>(t);
    }
    sqlite3_reset(*stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Error(sql, rc);
    return text;
  }

  // Prepared for the life of the connection.
  absl::StatusOr<sqlite3_stmt*> Prepare(const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return Error(absl::StrCat("prepare \"", sql, "\""), rc);
    stmts_.push_back(stmt);
    return stmt;
  }

  absl::Status Error(absl::string_view what, int rc) const {
    const char* msg = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    return absl::Status(
        CodeOf(rc), absl::StrCat("sqlite: ", what, " on ", path_, ": ", msg, " (code ", rc, ")"));
  }

  sqlite3* db() const { return db_; }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
  std::vector<sqlite3_stmt*> stmts_;
};

int BindBlob(sqlite3_stmt* stmt, int index, std::string_view data) {
  // A null pointer would bind NULL, not an empty blob.
  if (data.empty()) return sqlite3_bind_zeroblob(stmt, index, 0);
  return sqlite3_bind_blob(stmt, index, data.data(), static_cast<int>(data.size()), SQLITE_STATIC);
}

std::string_view ColumnBlob(sqlite3_stmt* stmt, int col) {
  const void* p = sqlite3_column_blob(stmt, col);
  const int n = sqlite3_column_bytes(stmt, col);
  if (p == nullptr || n <= 0) return {};
  return std::string_view(static_cast<const char*>(p), static_cast<size_t>(n));
}

struct Reader {
  Connection conn;
  sqlite3_stmt* get = nullptr;
  sqlite3_stmt* scan_range = nullptr;  // key >= ?1 AND key < ?2
  sqlite3_stmt* scan_from = nullptr;   // key >= ?1 (the prefix has no successor)
};

class SqliteKvStore final : public KvStore {
 public:
  SqliteKvStore(const KvOptions& options, std::unique_ptr<StoreDir> dir)
      : options_(options), dir_(std::move(dir)), path_(dir_->Path(kDbName)) {}

  ~SqliteKvStore() override {
    {
      absl::MutexLock lock(&readers_mu_);
      readers_.clear();
    }
    // The last connection to close checkpoints (syncing, synchronous=NORMAL)
    // and removes the WAL.
    writer_.reset();
    if (wal_fd_ >= 0) close(wal_fd_);
  }

  absl::Status Init() {
    // Created here so it is 0600; SQLite gives the -wal and -shm files the
    // database file's mode.
    const int fd = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoError(kEngine, "cannot create", path_, errno);
    close(fd);
    writer_ = std::make_unique<Connection>();
    if (absl::Status s = writer_->Open(path_, /*create=*/true); !s.ok()) return s;
    auto mode = writer_->QueryText("PRAGMA journal_mode=WAL");
    if (!mode.ok()) return mode.status();
    if (*mode != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite: cannot use WAL mode on ", path_, " (journal_mode is ", *mode, ")"));
    }
    for (const char* sql : {"PRAGMA synchronous=NORMAL",
                            "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY NOT NULL, "
                            "value BLOB NOT NULL) WITHOUT ROWID",
                            "BEGIN IMMEDIATE", "COMMIT"}) {
      if (absl::Status s = writer_->Exec(sql); !s.ok()) return s;
    }
    for (auto [stmt, sql] :
         {std::pair{&begin_, "BEGIN IMMEDIATE"}, std::pair{&commit_, "COMMIT"},
          std::pair{&rollback_, "ROLLBACK"},
          std::pair{&put_, "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)"},
          std::pair{&del_, "DELETE FROM kv WHERE key = ?1"}}) {
      auto prepared = writer_->Prepare(sql);
      if (!prepared.ok()) return prepared.status();
      *stmt = *prepared;
    }
    if (options_.durability == Durability::kPowerLoss) {
      // Our own descriptor of the WAL for the group-commit fdatasync. SQLite
      // keeps no locks on the WAL file itself, so this descriptor cannot
      // disturb its fcntl locks.
      const std::string wal = path_ + "-wal";
      wal_fd_ = open(wal.c_str(), O_RDONLY | O_CLOEXEC);
      if (wal_fd_ < 0) return ErrnoError(kEngine, "cannot open", wal, errno);
      if (absl::Status s = dir_->SyncDir(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Commit(absl::Span<const KvWrite> writes) override {
    if (absl::Status s = ValidateWrites(kEngine, writes); !s.ok()) return s;
    absl::MutexLock lock(&write_mu_);
    if (absl::Status s = Step(begin_, "Commit: BEGIN"); !s.ok()) return s;
    for (size_t i = 0; i < writes.size(); ++i) {
      const KvWrite& w = writes[i];
      sqlite3_stmt* stmt = w.value.has_value() ? put_ : del_;
      int rc = BindBlob(stmt, 1, w.key);
      if (rc == SQLITE_OK && w.value.has_value()) rc = BindBlob(stmt, 2, *w.value);
      absl::Status s = rc == SQLITE_OK ? Step(stmt, "Commit") : writer_->Error("Commit: bind", rc);
      sqlite3_clear_bindings(stmt);
      if (!s.ok()) {
        Rollback();
        return absl::Status(s.code(), absl::StrCat(s.message(), " at writes[", i, "] of ",
                                                   writes.size(), " (nothing written)"));
      }
    }
    if (absl::Status s = Step(commit_, "Commit: COMMIT"); !s.ok()) {
      Rollback();
      return absl::Status(s.code(), absl::StrCat(s.message(), " (nothing written)"));
    }
    const uint64_t seq = ++last_seq_;
    committed_.store(seq, std::memory_order_release);
    return seq;
  }

  absl::Status WaitDurable(uint64_t seq) override {
    if (options_.durability == Durability::kProcessCrash) return absl::OkStatus();
    return group_.Wait(kEngine, seq, committed_, [this]() -> absl::Status {
      if (fdatasync(wal_fd_) != 0) {
        return ErrnoError(kEngine, "WaitDurable: cannot fdatasync", path_ + "-wal", errno);
      }
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::optional<std::string>> Get(std::string_view key) const override {
    auto reader = AcquireReader();
    if (!reader.ok()) return reader.status();
    Reader& r = **reader;
    std::optional<std::string> result;
    int rc = BindBlob(r.get, 1, key);
    if (rc == SQLITE_OK) rc = sqlite3_step(r.get);
    if (rc == SQLITE_ROW) result.emplace(ColumnBlob(r.get, 0));
    sqlite3_reset(r.get);
    sqlite3_clear_bindings(r.get);
    absl::Status status;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) status = r.conn.Error("Get", rc);
    ReleaseReader(*std::move(reader));
    if (!status.ok()) return status;
    return result;
  }

  absl::Status Scan(
      std::string_view prefix,
      const std::function<absl::Status(std::string_view, std::string_view)>& fn) const override {
    auto reader = AcquireReader();
    if (!reader.ok()) return reader.status();
    Reader& r = **reader;
    const std::optional<std::string> end = PrefixSuccessor(prefix);
    sqlite3_stmt* stmt = end.has_value() ? r.scan_range : r.scan_from;
    // One statement is one read transaction: one snapshot for the whole scan.
    int rc = BindBlob(stmt, 1, prefix);
    if (rc == SQLITE_OK && end.has_value()) rc = BindBlob(stmt, 2, *end);
    absl::Status status;
    if (rc == SQLITE_OK) {
      while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        status = fn(ColumnBlob(stmt, 0), ColumnBlob(stmt, 1));
        if (!status.ok()) break;
      }
    }
    if (status.ok() && rc != SQLITE_DONE) status = r.conn.Error("Scan", rc);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    ReleaseReader(*std::move(reader));
    return status;
  }

  uint64_t SizeBytes() const override { return dir_->SizeBytes(); }
  std::vector<std::string> Files() const override { return dir_->Files(); }

 private:
  absl::Status Step(sqlite3_stmt* stmt, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    const int rc = sqlite3_step(stmt);
    absl::Status s;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) s = writer_->Error(what, rc);
    sqlite3_reset(stmt);
    return s;
  }

  void Rollback() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    if (!sqlite3_get_autocommit(writer_->db())) {
      sqlite3_step(rollback_);
      sqlite3_reset(rollback_);
    }
  }

  absl::StatusOr<std::unique_ptr<Reader>> AcquireReader() const {
    {
      absl::MutexLock lock(&readers_mu_);
      if (!readers_.empty()) {
        std::unique_ptr<Reader> r = std::move(readers_.back());
        readers_.pop_back();
        return r;
      }
    }
    auto r = std::make_unique<Reader>();
    if (absl::Status s = r->conn.Open(path_, /*create=*/false); !s.ok()) return s;
    if (absl::Status s = r->conn.Exec("PRAGMA query_only=1"); !s.ok()) return s;
    for (auto [stmt, sql] :
         {std::pair{&r->get, "SELECT value FROM kv WHERE key = ?1"},
          std::pair{&r->scan_range,
                    "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"},
          std::pair{&r->scan_from, "SELECT key, value FROM kv WHERE key >= ?1 ORDER BY key"}}) {
      auto prepared = r->conn.Prepare(sql);
      if (!prepared.ok()) return prepared.status();
      *stmt = *prepared;
    }
    return r;
  }

  void ReleaseReader(std::unique_ptr<Reader> r) const {
    absl::MutexLock lock(&readers_mu_);
    readers_.push_back(std::move(r));
  }

  const KvOptions options_;
  const std::unique_ptr<StoreDir> dir_;  // Outlives the connections (declared first).
  const std::string path_;
  int wal_fd_ = -1;  // kPowerLoss only.

  absl::Mutex write_mu_;
  std::unique_ptr<Connection> writer_;  // Statements used under write_mu_.
  sqlite3_stmt* begin_ = nullptr;
  sqlite3_stmt* commit_ = nullptr;
  sqlite3_stmt* rollback_ = nullptr;
  sqlite3_stmt* put_ = nullptr;
  sqlite3_stmt* del_ = nullptr;
  uint64_t last_seq_ ABSL_GUARDED_BY(write_mu_) = 0;
  std::atomic<uint64_t> committed_{0};
  GroupSync group_;

  mutable absl::Mutex readers_mu_;
  // Idle reader connections; a reader in use is owned by its caller.
  mutable std::vector<std::unique_ptr<Reader>> readers_ ABSL_GUARDED_BY(readers_mu_);
};

}  // namespace

bool SqliteOwnsFile(std::string_view name) {
  const std::string_view db = kDbName;
  if (name.substr(0, db.size()) != db) return false;
  const std::string_view suffix = name.substr(db.size());
  return suffix.empty() || suffix == "-wal" || suffix == "-shm" || suffix == "-journal";
}

absl::StatusOr<std::unique_ptr<KvStore>> OpenSqlite(const KvOptions& options,
                                                    std::unique_ptr<StoreDir> dir) {
  auto store = std::make_unique<SqliteKvStore>(options, std::move(dir));
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return store;
}

}  // namespace iommu::store::internal
