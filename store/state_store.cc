// SPDX-License-Identifier: Apache-2.0
#include "store/state_store.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "store/state_codec.h"

namespace iommu::store {
namespace {

// Reads every record of `kv` into `state`; names the store's directory in
// errors.
absl::Status ReadAll(const KvStore& kv, const KvOptions& options, core::DurableState* state,
                     RecoveryInfo* info) {
  const absl::Time start = absl::Now();
  uint32_t version = 0;
  uint64_t records = 0;
  absl::Status s = kv.Scan("", [&](std::string_view key, std::string_view value) {
    ++records;
    return DecodeEntry(key, value, state, &version);
  });
  auto where = [&](const absl::Status& e) {
    return absl::Status(e.code(), absl::StrFormat("state store %s (%s): %s", options.dir,
                                                  KvEngineName(options.engine), e.message()));
  };
  if (!s.ok()) return where(s);
  if (records > 0 && version == 0) {
    return where(absl::FailedPreconditionError(
        "it holds records but no schema record: not a store iommud wrote"));
  }
  if (version > kSchemaVersion) {
    return where(absl::FailedPreconditionError(absl::StrFormat(
        "schema version %d is newer than this iommud reads (up to %d); run the newer iommud",
        version, kSchemaVersion)));
  }
  info->schema_version = version;
  info->records = records;
  info->size_bytes = kv.SizeBytes();
  info->read_time = absl::Now() - start;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const StateStoreOptions& options,
                                                             core::DurableState* state,
                                                             RecoveryInfo* info) {
  RecoveryInfo local;
  RecoveryInfo& out = info != nullptr ? *info : local;
  out = RecoveryInfo();
  auto kv = KvStore::Open(options.kv);
  if (!kv.ok()) return kv.status();
  *state = core::DurableState();
  if (absl::Status s = ReadAll(**kv, options.kv, state, &out); !s.ok()) return s;
  if (out.records == 0 || out.schema_version < kSchemaVersion) {
    // A fresh store, or an earlier version's: this build writes records
    // the earlier one does not read, so the schema record says so first.
    std::string key, value;
    const KvWrite schema = SchemaWrite(&key, &value, options.written_by);
    auto seq = (*kv)->Commit({&schema, 1});
    if (!seq.ok()) return seq.status();
    if (absl::Status s = (*kv)->WaitDurable(*seq); !s.ok()) return s;
    out.fresh = out.records == 0;
    out.upgraded = !out.fresh;
    if (out.fresh) out.schema_version = kSchemaVersion;
  }
  return std::unique_ptr<StateStore>(new StateStore(options, *std::move(kv)));
}

uint64_t StateStore::Commit(const core::StateChanges& changes) {
  thread_local EncodedChanges encoded;
  const absl::Time start = absl::Now();
  encoded.Encode(changes);
  absl::StatusOr<uint64_t> seq = kv_->Commit(encoded.writes());
  if (!seq.ok()) Fatal(seq.status());
  const int64_t ns = absl::ToInt64Nanoseconds(absl::Now() - start);
  const double seconds = double(ns) * 1e-9;
  size_t bucket = 0;
  while (bucket < kCommitLatencyBounds.size() && seconds > kCommitLatencyBounds[bucket]) ++bucket;
  latency_buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  latency_sum_ns_.fetch_add(uint64_t(ns), std::memory_order_relaxed);
  commits_.fetch_add(1, std::memory_order_relaxed);
  writes_.fetch_add(encoded.size(), std::memory_order_relaxed);
  return *seq;
}

void StateStore::WaitDurable(uint64_t ticket) {
  if (absl::Status s = kv_->WaitDurable(ticket); !s.ok()) Fatal(s);
}

void StateStore::Fatal(const absl::Status& status) {
  const absl::Status named(status.code(),
                           absl::StrFormat("state store %s: a write failed, so iommud stops (the "
                                           "restart serves the last state written): %s",
                                           options_.kv.dir, status.message()));
  if (options_.on_fatal) {
    options_.on_fatal(named);
  } else {
    std::fprintf(stderr, "%s\n", std::string(named.message()).c_str());
  }
  std::abort();
}

StoreStats StateStore::Stats() const {
  StoreStats s{
      .commits = commits_.load(), .writes = writes_.load(), .size_bytes = kv_->SizeBytes()};
  for (size_t i = 0; i < latency_buckets_.size(); ++i) s.latency_buckets[i] = latency_buckets_[i];
  s.latency_sum_seconds = double(latency_sum_ns_.load()) * 1e-9;
  return s;
}

absl::StatusOr<core::DurableState> ReadStore(const KvOptions& options, RecoveryInfo* info) {
  RecoveryInfo local;
  RecoveryInfo& out = info != nullptr ? *info : local;
  out = RecoveryInfo();
  auto kv = KvStore::Open(options);
  if (!kv.ok()) return kv.status();
  core::DurableState state;
  if (absl::Status s = ReadAll(**kv, options, &state, &out); !s.ok()) return s;
  if (out.records == 0) {
    return absl::NotFoundError(
        absl::StrFormat("state store %s (%s): empty", options.dir, KvEngineName(options.engine)));
  }
  return state;
}

}  // namespace iommu::store
