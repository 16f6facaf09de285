// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_SECURE_RANDOM_H_
#define IOMMU_CORE_BASE_SECURE_RANDOM_H_

// Unguessable values from the operating system's CSPRNG (getrandom(2)): the
// ids and tokens a client could otherwise forge or guess (session ids, export
// tokens). Never a seeded PRNG, never derived from counters or addresses.
//
// Thread-safe. getrandom blocks only until the kernel's pool is initialised
// at boot; a failure of the syscall is a broken host, so it aborts rather
// than hand out a weak value.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace iommu::core {

// Fills `out` with random bytes.
void SecureRandomBytes(absl::Span<uint8_t> out);

// A uniformly random non-zero 64-bit value.
uint64_t SecureRandomNonZero64();

// A keyed permutation of 64-bit values (a four-round Feistel network whose
// round function is SipHash-2-4 under a 128-bit key): ids drawn as
// Apply(1), Apply(2), ... are distinct because the counter never repeats, and
// unguessable because without the key the next output of a pseudo-random
// permutation cannot be told from any other unused value. The key comes
// from SecureRandomBytes unless given (tests, and a restored store).
// Thread-compatible (immutable after construction).
class IdPermutation {
 public:
  IdPermutation();  // a fresh random key
  IdPermutation(uint64_t key0, uint64_t key1) : key0_(key0), key1_(key1) {}
  uint64_t Apply(uint64_t value) const;
  uint64_t key0() const { return key0_; }
  uint64_t key1() const { return key1_; }

 private:
  uint64_t key0_, key1_;
};

// SipHash-2-4 of one 64-bit word under (key0, key1).
uint64_t SipHash24(uint64_t key0, uint64_t key1, uint64_t word);

// `prefix` followed by `num_bytes` random bytes in lower-case hex
// (2 * num_bytes characters): e.g. SecureToken("iexp_", 16) carries 128 bits.
std::string SecureToken(absl::string_view prefix, size_t num_bytes);

}  // namespace iommu::core

#endif  // IOMMU_CORE_BASE_SECURE_RANDOM_H_
