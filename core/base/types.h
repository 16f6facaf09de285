// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_TYPES_H_
#define IOMMU_CORE_BASE_TYPES_H_

// Address types. An I/O virtual address and a physical address are the two
// values most easily swapped, so each has its own type: an Iova never converts
// to a PhysAddr, and mixing them does not compile. Arithmetic with plain byte
// offsets (uint64_t) is allowed; the difference of two addresses of one kind is
// a byte count.

#include <compare>
#include <cstdint>
#include <ostream>
#include <string>

#include "absl/strings/str_format.h"

namespace iommu::core {

template <typename Tag>
class Address {
 public:
  constexpr Address() = default;
  constexpr explicit Address(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }

  constexpr Address operator+(uint64_t offset_bytes) const {
    return Address(value_ + offset_bytes);
  }
  constexpr Address operator-(uint64_t offset_bytes) const {
    return Address(value_ - offset_bytes);
  }
  constexpr uint64_t operator-(Address other) const { return value_ - other.value_; }
  constexpr Address& operator+=(uint64_t offset_bytes) {
    value_ += offset_bytes;
    return *this;
  }
  // Low bits: the offset of this address within an aligned unit.
  constexpr uint64_t operator&(uint64_t mask) const { return value_ & mask; }

  friend constexpr auto operator<=>(Address, Address) = default;

  // "0x..." (this abseil predates AbslStringify; use Hex() in messages).
  std::string Hex() const { return absl::StrFormat("%#x", value_); }
  friend std::ostream& operator<<(std::ostream& os, Address a) { return os << a.Hex(); }

 private:
  uint64_t value_ = 0;
};

struct IovaTag;
struct PhysAddrTag;

// An I/O virtual address: what a device puts on the bus, before translation.
using Iova = Address<IovaTag>;
// A physical (output) address: what translation yields.
using PhysAddr = Address<PhysAddrTag>;

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_TYPES_H_
