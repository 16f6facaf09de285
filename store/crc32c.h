// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_STORE_CRC32C_H_
#define IOMMU_STORE_CRC32C_H_

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
// ext4 and most storage formats. Uses the SSE4.2 crc32 instruction when the
// CPU has it (checked once at run time) and a table otherwise. Thread-safe.

#include <cstdint>
#include <string_view>

namespace iommu::store {

// The CRC-32C of data. `init` is the CRC of what came before, so
// Crc32c(b, Crc32c(a)) == Crc32c(a + b); the CRC of nothing is 0.
uint32_t Crc32c(std::string_view data, uint32_t init = 0);

namespace internal {
// The two implementations behind Crc32c, for tests and benchmarks. Same
// contract as Crc32c. Crc32cHardware REQUIRES: Crc32cHardwareAvailable().
uint32_t Crc32cPortable(std::string_view data, uint32_t init);
uint32_t Crc32cHardware(std::string_view data, uint32_t init);
bool Crc32cHardwareAvailable();
}  // namespace internal

}  // namespace iommu::store

#endif  // IOMMU_STORE_CRC32C_H_
