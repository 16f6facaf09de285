// SPDX-License-Identifier: Apache-2.0
#include "server/stream_limiter.h"

#include "absl/strings/str_format.h"
#include "core/base/errors.h"

namespace iommu::server {

absl::Status StreamLimiter::Acquire(const std::string& device) {
  if (!device.empty() && !devices_.contains(device)) {
    return core::FieldError(absl::StatusCode::kNotFound, "device", device, "no such device");
  }
  absl::MutexLock l(&mu_);
  uint32_t& open = open_[device];
  if (open >= max_per_device_) {
    const std::string who = device.empty() ? "the admin" : "the device";
    return core::FieldError(absl::StatusCode::kResourceExhausted, "device", device,
                            absl::StrFormat("%s has %d %s open, the --%s=%d limit; close one "
                                            "first",
                                            who, open, what_, flag_, max_per_device_));
  }
  ++open;
  return absl::OkStatus();
}

void StreamLimiter::Release(const std::string& device) {
  absl::MutexLock l(&mu_);
  auto it = open_.find(device);
  if (it == open_.end()) return;
  if (--it->second == 0) open_.erase(it);
}

uint32_t StreamLimiter::open(const std::string& device) const {
  absl::MutexLock l(&mu_);
  auto it = open_.find(device);
  return it == open_.end() ? 0 : it->second;
}

}  // namespace iommu::server
