// SPDX-License-Identifier: Apache-2.0
#include "client/handles.h"

namespace iommu::client {
namespace {

absl::Status RunOnce(Closer& closer) {
  if (!closer) return absl::OkStatus();
  Closer run = std::move(closer);
  closer = nullptr;
  return run();
}

}  // namespace

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    (void)Close();
    info_ = std::move(other.info_);
    closer_ = std::move(other.closer_);
    other.closer_ = nullptr;
  }
  return *this;
}

absl::Status Buffer::Close() { return RunOnce(closer_); }

uint64_t Buffer::Release() {
  closer_ = nullptr;
  return info_.buffer_id();
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    (void)Close();
    info_ = std::move(other.info_);
    closer_ = std::move(other.closer_);
    other.closer_ = nullptr;
  }
  return *this;
}

absl::Status Mapping::Close() { return RunOnce(closer_); }

uint64_t Mapping::Release() {
  closer_ = nullptr;
  return info_.dma_addr;
}

}  // namespace iommu::client
