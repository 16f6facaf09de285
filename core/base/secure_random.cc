// SPDX-License-Identifier: Apache-2.0
#include "core/base/secure_random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace iommu::core {

void SecureRandomBytes(absl::Span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "getrandom failed (errno %d): no secure randomness\n", errno);
      std::abort();
    }
    done += size_t(n);
  }
}

uint64_t SecureRandomNonZero64() {
  for (;;) {
    uint8_t bytes[8];
    SecureRandomBytes(absl::MakeSpan(bytes));
    uint64_t v = 0;
    for (uint8_t b : bytes) v = (v << 8) | b;
    if (v != 0) return v;
  }
}

namespace {

inline uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

struct SipState {
  uint64_t v0, v1, v2, v3;
  void Round() {
    v0 += v1;
    v1 = Rotl(v1, 13);
    v1 ^= v0;
    v0 = Rotl(v0, 32);
    v2 += v3;
    v3 = Rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = Rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = Rotl(v1, 17);
    v1 ^= v2;
    v2 = Rotl(v2, 32);
  }
};

}  // namespace

uint64_t SipHash24(uint64_t key0, uint64_t key1, uint64_t word) {
  SipState s{key0 ^ 0x736f6d6570736575ull, key1 ^ 0x646f72616e646f6dull,
             key0 ^ 0x6c7967656e657261ull, key1 ^ 0x7465646279746573ull};
  s.v3 ^= word;
  s.Round();
  s.Round();
  s.v0 ^= word;
  const uint64_t last = uint64_t{8} << 56;  // message length 8, no tail bytes
  s.v3 ^= last;
  s.Round();
  s.Round();
  s.v0 ^= last;
  s.v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) s.Round();
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

IdPermutation::IdPermutation() {
  uint8_t bytes[16];
  SecureRandomBytes(absl::MakeSpan(bytes));
  key0_ = key1_ = 0;
  for (int i = 0; i < 8; ++i) key0_ = (key0_ << 8) | bytes[i];
  for (int i = 8; i < 16; ++i) key1_ = (key1_ << 8) | bytes[i];
}

uint64_t IdPermutation::Apply(uint64_t value) const {
  uint32_t left = uint32_t(value >> 32), right = uint32_t(value);
  for (uint64_t round = 0; round < 4; ++round) {
    const uint32_t f = uint32_t(SipHash24(key0_, key1_, (round << 32) | right));
    const uint32_t next = left ^ f;
    left = right;
    right = next;
  }
  return (uint64_t{left} << 32) | right;
}

std::string SecureToken(absl::string_view prefix, size_t num_bytes) {
  std::string raw(num_bytes, '\0');
  SecureRandomBytes(absl::MakeSpan(reinterpret_cast<uint8_t*>(raw.data()), raw.size()));
  return absl::StrCat(prefix, absl::BytesToHexString(raw));
}

}  // namespace iommu::core
