// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_BITS_H_
#define IOMMU_CORE_BASE_BITS_H_

// Power-of-two and alignment arithmetic on 64-bit quantities, with explicit
// overflow checks. Every length in the project is 64-bit; where a sum could
// wrap, callers use CheckedAdd rather than `+`.

#include <bit>
#include <cstdint>
#include <optional>

namespace iommu::core {

constexpr bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Smallest power of two >= v. REQUIRES: 0 < v <= 2^63.
constexpr uint64_t RoundUpPowerOfTwo(uint64_t v) { return std::bit_ceil(v); }

// log2 of a power of two. REQUIRES: IsPowerOfTwo(v).
constexpr unsigned Log2(uint64_t v) { return std::countr_zero(v); }

// Alignment helpers. REQUIRES: IsPowerOfTwo(align).
constexpr uint64_t AlignDown(uint64_t v, uint64_t align) { return v & ~(align - 1); }
constexpr bool IsAligned(uint64_t v, uint64_t align) { return (v & (align - 1)) == 0; }
// nullopt when rounding up would pass 2^64.
constexpr std::optional<uint64_t> AlignUp(uint64_t v, uint64_t align) {
  const uint64_t r = AlignDown(v + (align - 1), align);
  if (r < v) return std::nullopt;
  return r;
}

// a + b, or nullopt on unsigned overflow.
constexpr std::optional<uint64_t> CheckedAdd(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// The last address of the range [start, start + size_bytes), or nullopt when
// size_bytes is zero or the range passes 2^64. Inclusive ends let a range
// reach the top of the address space without overflowing.
constexpr std::optional<uint64_t> LastOfRange(uint64_t start, uint64_t size_bytes) {
  if (size_bytes == 0) return std::nullopt;
  return CheckedAdd(start, size_bytes - 1);
}

// Mask with bits [0, bits) set. REQUIRES: bits <= 64.
constexpr uint64_t LowMask(unsigned bits) {
  return bits >= 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
}

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_BITS_H_
