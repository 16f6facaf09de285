// SPDX-License-Identifier: Apache-2.0
#include "client/request_id.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace iommu::client::internal {
namespace {

// Fills `out` from the kernel's CSPRNG: getrandom(2), else /dev/urandom
// (a seccomp profile may refuse the syscall with ENOSYS or EPERM).
void ReadKernelRandom(uint8_t* out, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = getrandom(out + done, size - done, 0);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      break;
    }
  }
  if (done == size) return;
  const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  while (fd >= 0 && done < size) {
    const ssize_t n = read(fd, out + done, size - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  if (fd >= 0) close(fd);
  if (done == size) return;
  std::fputs("iommu client: no kernel random source for a request id\n", stderr);
  std::abort();
}

}  // namespace

RequestId NewRequestId() {
  static constexpr char kHex[] = "0123456789abcdef";
  uint8_t bits[kRequestIdChars / 2];
  ReadKernelRandom(bits, sizeof(bits));
  RequestId id;
  for (size_t i = 0; i < sizeof(bits); ++i) {
    id[2 * i] = kHex[bits[i] >> 4];
    id[2 * i + 1] = kHex[bits[i] & 0xf];
  }
  return id;
}

}  // namespace iommu::client::internal
