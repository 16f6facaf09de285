// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_HEAP_TRIMMER_H_
#define IOMMU_SERVER_HEAP_TRIMMER_H_

// Returns the heap's free memory to the operating system after large
// requests (docs/design.md#memory-bound). A MapSg of --max_sg_segments, a
// TranslateBatch of --max_translate_accesses or a large Batch message parses
// into many small objects and builds a reply of megabytes; all of it is freed
// when the call ends, but the allocator keeps the freed pages, so the
// process's resident set would stay at the high-water mark of the largest
// request it ever served. The calls that move at least kLargeBytes (request
// or reply) say so here, and the daemon's timer then calls malloc_trim once
// they have settled: kSettle after the last one (its reply sent and freed
// by then), and at least every kMaxDelay while they keep coming.
//
// malloc_trim returns the free pages inside every arena, but never shrinks
// the top of a thread's arena, which glibc shrinks on free only past its
// trim threshold; and glibc raises that threshold (to 64 MiB) and the mmap
// threshold (to 32 MiB) the first time a large block is freed. So the
// daemon fixes both at start (ConfigureAllocator): blocks of kMmapBytes or
// more are mapped on their own and unmapped when freed, and an arena's top
// is shrunk on free once it passes kTopBytes.
//
// Cost: a trim walks the allocator's free lists (about a millisecond for a
// heap of hundreds of MiB) on the timer's thread, never on a call's; it
// happens at most once per timer tick and only after large requests.
//
// Thread-safe (atomics only).

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace iommu::server {

class HeapTrimmer {
 public:
  static constexpr size_t kLargeBytes = size_t{256} << 10;
  static constexpr absl::Duration kSettle = absl::Milliseconds(100);
  static constexpr absl::Duration kMaxDelay = absl::Seconds(1);
  static constexpr size_t kMmapBytes = size_t{256} << 10;
  static constexpr size_t kTopBytes = size_t{1} << 20;

  // Fixes the allocator's mmap and trim thresholds (see above). Once, at
  // the daemon's start.
  static void ConfigureAllocator();

  // A call whose request or reply took `bytes` has finished (or is about
  // to): noted when bytes >= kLargeBytes.
  void Finished(size_t bytes, absl::Time now = absl::Now());
  // From the daemon's timer: trims when a noted call has settled; true when
  // it trimmed.
  bool MaybeTrim(absl::Time now = absl::Now());
  // Trims done so far.
  uint64_t trims() const { return trims_.load(std::memory_order_relaxed); }

 private:
  // Unix nanoseconds of the first and the last call noted since the last
  // trim; first 0: nothing pending. Relaxed: a late or early trim only
  // moves when memory is returned, never what is returned.
  std::atomic<int64_t> first_ns_{0};
  std::atomic<int64_t> last_ns_{0};
  std::atomic<uint64_t> trims_{0};
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_HEAP_TRIMMER_H_
