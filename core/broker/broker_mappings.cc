// SPDX-License-Identifier: Apache-2.0
#include "core/broker/broker_mappings.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace iommu::core::internal {

MappingTable::MappingTable(uint64_t granule_bytes, bool index_all)
    : granule_bytes_(granule_bytes), index_all_(index_all) {
  assert(granule_bytes != 0 && (granule_bytes & (granule_bytes - 1)) == 0);
}

void MappingTable::Insert(MappingRecord&& record) {
  const uint64_t start = record.iova.value();
  const uint64_t size_bytes = record.iova_size_bytes;
  assert(size_bytes != 0);
  if (NeedsIndex(start, size_bytes)) {
    const bool inserted = ordered_.emplace(start, size_bytes).second;
    assert(inserted);
    (void)inserted;
  }
  if (record.session_id != 0) by_session_[record.session_id].insert(start);
  const bool inserted = records_.try_emplace(start, std::move(record)).second;
  assert(inserted);
  (void)inserted;
}

MappingRecord& MappingTable::Emplace(Iova iova, uint64_t iova_size_bytes, uint64_t session_id) {
  const uint64_t start = iova.value();
  assert(iova_size_bytes != 0);
  if (NeedsIndex(start, iova_size_bytes)) {
    const bool inserted = ordered_.emplace(start, iova_size_bytes).second;
    assert(inserted);
    (void)inserted;
  }
  const auto [it, inserted] = records_.try_emplace(start);
  assert(inserted);
  (void)inserted;
  it->second.iova = iova;
  it->second.iova_size_bytes = iova_size_bytes;
  it->second.session_id = session_id;
  if (session_id != 0) by_session_[session_id].insert(start);
  return it->second;
}

MappingRecord* MappingTable::FindStart(uint64_t iova_start) {
  const auto it = records_.find(iova_start);
  return it == records_.end() ? nullptr : &it->second;
}

const MappingRecord* MappingTable::FindStart(uint64_t iova_start) const {
  const auto it = records_.find(iova_start);
  return it == records_.end() ? nullptr : &it->second;
}

MappingRecord* MappingTable::Find(uint64_t addr) {
  if (!index_all_) {
    // A short record containing addr starts exactly here.
    const auto it = records_.find(addr & ~(granule_bytes_ - 1));
    if (it != records_.end() && addr - it->first < it->second.iova_size_bytes) {
      return &it->second;
    }
  }
  auto it = ordered_.upper_bound(addr);
  if (it == ordered_.begin()) return nullptr;
  --it;
  if (addr - it->first >= it->second) return nullptr;
  return &records_.find(it->first)->second;
}

void MappingTable::Erase(uint64_t iova_start) {
  const auto it = records_.find(iova_start);
  assert(it != records_.end());
  if (NeedsIndex(iova_start, it->second.iova_size_bytes)) {
    const size_t erased = ordered_.erase(iova_start);
    assert(erased == 1);
    (void)erased;
  }
  if (const uint64_t session_id = it->second.session_id; session_id != 0) {
    auto s = by_session_.find(session_id);
    assert(s != by_session_.end());
    s->second.erase(iova_start);
    if (s->second.empty()) by_session_.erase(s);
  }
  records_.erase(it);
}

void MappingTable::AppendStartsOf(uint64_t session_id, std::vector<uint64_t>* out) const {
  const auto it = by_session_.find(session_id);
  if (it == by_session_.end()) return;
  out->insert(out->end(), it->second.begin(), it->second.end());
}

size_t MappingTable::CountOf(uint64_t session_id) const {
  const auto it = by_session_.find(session_id);
  return it == by_session_.end() ? 0 : it->second.size();
}

std::vector<uint64_t> MappingTable::StartsInOrder() const {
  std::vector<uint64_t> starts;
  starts.reserve(records_.size());
  for (const auto& [start, record] : records_) starts.push_back(start);
  std::sort(starts.begin(), starts.end());
  return starts;
}

absl::Status MappingTable::CheckInvariants() const {
  uint64_t indexed = 0;
  uint64_t prev_end = 0;
  bool first = true;
  for (uint64_t start : StartsInOrder()) {
    const MappingRecord& m = records_.at(start);
    if (m.iova.value() != start) {
      return absl::InternalError(
          absl::StrFormat("mapping at %#x stored under %#x", m.iova.value(), start));
    }
    if (m.iova_size_bytes == 0 || (!first && start < prev_end)) {
      return absl::InternalError(absl::StrFormat("mapping at %#x overlaps", start));
    }
    first = false;
    prev_end = start + m.iova_size_bytes;
    const auto it = ordered_.find(start);
    if (NeedsIndex(start, m.iova_size_bytes)) {
      if (it == ordered_.end() || it->second != m.iova_size_bytes) {
        return absl::InternalError(absl::StrFormat(
            "mapping at %#x+%#x missing from the ordered index", start, m.iova_size_bytes));
      }
      ++indexed;
    } else if (it != ordered_.end()) {
      return absl::InternalError(
          absl::StrFormat("short mapping at %#x in the ordered index", start));
    }
  }
  if (indexed != ordered_.size()) {
    return absl::InternalError(absl::StrFormat("ordered index holds %d entries for %d mappings",
                                               ordered_.size(), indexed));
  }
  size_t in_sessions = 0;
  for (const auto& [session_id, starts] : by_session_) {
    if (session_id == 0 || starts.empty()) {
      return absl::InternalError(
          absl::StrFormat("session index holds an empty or zero session %#x", session_id));
    }
    for (const uint64_t start : starts) {
      const MappingRecord* m = FindStart(start);
      if (m == nullptr || m->session_id != session_id) {
        return absl::InternalError(
            absl::StrFormat("session index lists %#x under session %#x, which has no such mapping",
                            start, session_id));
      }
    }
    in_sessions += starts.size();
  }
  const size_t with_session = std::count_if(
      records_.begin(), records_.end(), [](const auto& kv) { return kv.second.session_id != 0; });
  if (in_sessions != with_session) {
    return absl::InternalError(absl::StrFormat(
        "session index holds %d mappings, %d were made under sessions", in_sessions, with_session));
  }
  return absl::OkStatus();
}

}  // namespace iommu::core::internal
