// SPDX-License-Identifier: Apache-2.0
#include "core/pgtable/pgtable_page_pool.h"

#include <cassert>
#include <cstring>
#include <new>

#include "absl/strings/str_format.h"

namespace iommu::core {

PgtablePagePool::~PgtablePagePool() {
  absl::MutexLock l(&mu_);
  for (int i = 0; i < kSizes; ++i) {
    const uint64_t page_bytes = uint64_t{4096} << (2 * i);
    while (free_[i] != nullptr) {
      void* page = free_[i];
      free_[i] = *static_cast<void**>(page);
      Release(page, page_bytes);
    }
  }
}

PgtablePagePool& PgtablePagePool::Default() {
  static PgtablePagePool* const pool = new PgtablePagePool();
  return *pool;
}

bool PgtablePagePool::IsPageSize(uint64_t page_bytes) { return SizeIndex(page_bytes) >= 0; }

int PgtablePagePool::SizeIndex(uint64_t page_bytes) {
  switch (page_bytes) {
    case uint64_t{4} << 10:
      return 0;
    case uint64_t{16} << 10:
      return 1;
    case uint64_t{64} << 10:
      return 2;
    default:
      return -1;
  }
}

void* PgtablePagePool::AllocFresh(uint64_t page_bytes) {
  void* page = ::operator new (page_bytes, std::align_val_t{page_bytes}, std::nothrow);
  if (page == nullptr) return nullptr;
  std::memset(page, 0, page_bytes);
  return page;
}

void PgtablePagePool::Release(void* page, uint64_t page_bytes) {
  ::operator delete (page, std::align_val_t{page_bytes});
}

void* PgtablePagePool::Alloc(uint64_t page_bytes) {
  const int i = SizeIndex(page_bytes);
  assert(i >= 0 && "not a page-table page size");
  {
    absl::MutexLock l(&mu_);
    if (void* page = free_[i]; page != nullptr) {
      free_[i] = *static_cast<void**>(page);
      --count_[i];
      pooled_bytes_ -= page_bytes;
      ++hits_;
      *static_cast<void**>(page) = nullptr;  // the page is all zero again
      return page;
    }
    ++misses_;
  }
  return AllocFresh(page_bytes);
}

void PgtablePagePool::Free(void* page, uint64_t page_bytes) {
  const int i = SizeIndex(page_bytes);
  assert(i >= 0 && "not a page-table page size");
  {
    absl::MutexLock l(&mu_);
    if (pooled_bytes_ + page_bytes <= max_bytes_) {
      *static_cast<void**>(page) = free_[i];
      free_[i] = page;
      ++count_[i];
      pooled_bytes_ += page_bytes;
      return;
    }
    ++releases_;
  }
  Release(page, page_bytes);
}

PgtablePagePool::Stats PgtablePagePool::GetStats() const {
  absl::MutexLock l(&mu_);
  Stats s;
  for (int i = 0; i < kSizes; ++i) s.pooled_pages += count_[i];
  s.pooled_bytes = pooled_bytes_;
  s.hits = hits_;
  s.misses = misses_;
  s.releases = releases_;
  return s;
}

absl::Status PgtablePagePool::CheckInvariants() const {
  absl::MutexLock l(&mu_);
  uint64_t bytes = 0;
  for (int i = 0; i < kSizes; ++i) {
    const uint64_t page_bytes = uint64_t{4096} << (2 * i);
    uint64_t n = 0;
    for (const void* page = free_[i]; page != nullptr; page = *static_cast<void* const*>(page)) {
      if (++n > count_[i]) break;
      if (reinterpret_cast<uintptr_t>(page) % page_bytes != 0) {
        return absl::InternalError(
            absl::StrFormat("pooled %#x-byte page %p is not aligned", page_bytes, page));
      }
      const auto* words = static_cast<const uint64_t*>(page);
      for (uint64_t w = 1; w < page_bytes / sizeof(uint64_t); ++w) {
        if (words[w] != 0) {
          return absl::InternalError(absl::StrFormat("pooled %#x-byte page %p: word %u is %#x",
                                                     page_bytes, page, w, words[w]));
        }
      }
    }
    if (n != count_[i]) {
      return absl::InternalError(absl::StrFormat("%#x-byte free list holds %s%u pages, counted %u",
                                                 page_bytes, n > count_[i] ? "over " : "",
                                                 n > count_[i] ? count_[i] : n, count_[i]));
    }
    bytes += n * page_bytes;
  }
  if (bytes != pooled_bytes_) {
    return absl::InternalError(
        absl::StrFormat("pool holds %u bytes, counted %u", bytes, pooled_bytes_));
  }
  if (pooled_bytes_ > max_bytes_) {
    return absl::InternalError(
        absl::StrFormat("pool holds %u bytes, above max_bytes %u", pooled_bytes_, max_bytes_));
  }
  return absl::OkStatus();
}

}  // namespace iommu::core
