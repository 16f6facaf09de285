// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_TESTING_FUZZ_INPUT_H_
#define IOMMU_CORE_TESTING_FUZZ_INPUT_H_

// Reads a fuzzer's input as a stream of small decisions. Every read consumes
// from the front and yields 0 (or the first choice) once the input is used
// up, so that any byte string decodes to some sequence and a mutation of one
// byte changes one decision. Header-only, so that the libFuzzer build and
// the ctest replay (core/testing/fuzz_replay_main.cc) decode alike.

#include <cstddef>
#include <cstdint>
#include <string>

namespace iommu::testing {

// Argument evaluation order is unspecified: callers read into locals, one
// read per full expression (or in braced initialisers, which are ordered),
// so that every compiler decodes an input alike.
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return at_ >= size_; }

  uint8_t Byte() { return at_ < size_ ? data_[at_++] : 0; }
  bool Bool() { return (Byte() & 1) != 0; }
  // Little-endian, `bytes` of them (at most 8).
  uint64_t Bytes(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t{Byte()} << (8 * i);
    return v;
  }
  uint16_t U16() { return uint16_t(Bytes(2)); }
  uint32_t U32() { return uint32_t(Bytes(4)); }
  uint64_t U64() { return Bytes(8); }
  // A value in [0, n). REQUIRES: n > 0.
  size_t Index(size_t n) { return n <= 256 ? Byte() % n : U32() % n; }
  // Up to `max_bytes` bytes as a string (a length byte, then the bytes).
  std::string String(size_t max_bytes) {
    const size_t n = Byte() % (max_bytes + 1);
    std::string s;
    for (size_t i = 0; i < n && !empty(); ++i) s.push_back(char(Byte()));
    return s;
  }

 private:
  const uint8_t* const data_;
  const size_t size_;
  size_t at_ = 0;
};

}  // namespace iommu::testing

#endif  // IOMMU_CORE_TESTING_FUZZ_INPUT_H_
