// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_PROT_H_
#define IOMMU_CORE_BASE_PROT_H_

// Mapping protections (what a caller asks for, as Linux's IOMMU_* prot flags)
// and access grants (what a page-table leaf permits, decoded from its
// descriptor), shared by the page-table engine, the IOTLB and the broker.

#include <cstdint>

namespace iommu::core {

// Requested protection of a mapping: a bit set, the vocabulary of
// include/linux/iommu.h (IOMMU_READ, IOMMU_WRITE, ...).
enum class Prot : uint32_t {
  kNone = 0,
  kRead = 1u << 0,
  kWrite = 1u << 1,
  kCache = 1u << 2,   // cacheable, inner-shareable normal memory
  kNoExec = 1u << 3,  // instruction fetches fault
  kMmio = 1u << 4,    // device memory (e.g. an MSI doorbell)
  kPriv = 1u << 5,    // privileged accesses only
};
constexpr Prot operator|(Prot a, Prot b) { return Prot(uint32_t(a) | uint32_t(b)); }
constexpr Prot operator&(Prot a, Prot b) { return Prot(uint32_t(a) & uint32_t(b)); }
constexpr bool Has(Prot set, Prot bit) { return (uint32_t(set) & uint32_t(bit)) != 0; }
inline constexpr uint32_t kProtAllBits = (1u << 6) - 1;

// A device access, as an SMMU sees a transaction.
enum class AccessKind : uint8_t { kRead, kWrite, kExec };
struct Access {
  AccessKind kind = AccessKind::kRead;
  bool privileged = false;
};

// What a leaf descriptor grants, for each access kind and privilege level.
// Decoded from stage-1 AP[2:1]/UXN/PXN or stage-2 S2AP/XN by the format.
class Grant {
 public:
  static constexpr uint8_t kReadUnpriv = 1u << 0;
  static constexpr uint8_t kWriteUnpriv = 1u << 1;
  static constexpr uint8_t kExecUnpriv = 1u << 2;
  static constexpr uint8_t kReadPriv = 1u << 3;
  static constexpr uint8_t kWritePriv = 1u << 4;
  static constexpr uint8_t kExecPriv = 1u << 5;

  constexpr Grant() = default;
  constexpr explicit Grant(uint8_t bits) : bits_(bits) {}
  constexpr uint8_t bits() const { return bits_; }

  constexpr bool Allows(Access a) const {
    const unsigned shift = a.privileged ? 3 : 0;
    return (bits_ >> (shift + unsigned(a.kind))) & 1u;
  }
  friend constexpr bool operator==(Grant, Grant) = default;

 private:
  uint8_t bits_ = 0;
};

static_assert(Grant(Grant::kWritePriv).Allows({AccessKind::kWrite, true}));
static_assert(!Grant(Grant::kWritePriv).Allows({AccessKind::kWrite, false}));
static_assert(Grant(Grant::kExecUnpriv).Allows({AccessKind::kExec, false}));

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_PROT_H_
