// SPDX-License-Identifier: Apache-2.0
// Buffers (pinned pages) and the per-device quotas they and mappings charge.

#include "absl/functional/function_ref.h"
#include "absl/strings/str_format.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {
namespace internal {
namespace {

// Charges `amount` against `limit` on `counter`; false (and no change) when
// it would pass the limit.
bool TryCharge(std::atomic<uint64_t>& counter, uint64_t amount, uint64_t limit) {
  uint64_t cur = counter.load(std::memory_order_relaxed);
  do {
    if (amount > limit || cur > limit - amount) return false;
  } while (!counter.compare_exchange_weak(cur, cur + amount, std::memory_order_relaxed));
  return true;
}

// Charges one more object of `bytes` against a count and a byte total; on
// either limit nothing changes and the matching error is returned.
absl::Status ChargeOne(std::atomic<uint64_t>& count, uint64_t max_count,
                       std::atomic<uint64_t>& total, uint64_t max_total, uint64_t bytes,
                       absl::FunctionRef<absl::Status()> count_full,
                       absl::FunctionRef<absl::Status()> total_full) {
  if (!TryCharge(count, 1, max_count)) return count_full();
  if (!TryCharge(total, bytes, max_total)) {
    count.fetch_sub(1, std::memory_order_relaxed);
    return total_full();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DeviceState::ChargeMapping(uint64_t bytes) {
  return ChargeOne(
      mappings, quotas.max_mappings, mapped_bytes, quotas.max_mapped_bytes, bytes,
      [&] {
        return FieldError(
            absl::StatusCode::kResourceExhausted, "device", config.name,
            absl::StrFormat("mapping quota of %d mappings reached", quotas.max_mappings));
      },
      [&] {
        return FieldError(
            absl::StatusCode::kResourceExhausted, "size_bytes", bytes,
            absl::StrFormat("device %s would pass its mapped-bytes quota %#x "
                            "(%#x mapped)",
                            config.name, quotas.max_mapped_bytes, mapped_bytes.load()));
      });
}

void DeviceState::RefundMapping(uint64_t bytes) {
  mappings.fetch_sub(1, std::memory_order_relaxed);
  mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

absl::Status DeviceState::ChargeBuffer(uint64_t bytes) {
  return ChargeOne(
      buffers, quotas.max_buffers, buffer_bytes, quotas.max_buffer_bytes, bytes,
      [&] {
        return FieldError(
            absl::StatusCode::kResourceExhausted, "device", config.name,
            absl::StrFormat("buffer quota of %d buffers reached", quotas.max_buffers));
      },
      [&] {
        return FieldError(absl::StatusCode::kResourceExhausted, "size_bytes", bytes,
                          absl::StrFormat("device %s would pass its buffer-bytes quota %#x",
                                          config.name, quotas.max_buffer_bytes));
      });
}

void DeviceState::RefundBuffer(uint64_t bytes) {
  buffers.fetch_sub(1, std::memory_order_relaxed);
  buffer_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace internal

absl::StatusOr<BufferInfo> Broker::AllocBuffer(const Caller& caller, const std::string& device,
                                               uint64_t size_bytes, Placement placement,
                                               const std::string& pool) {
  BrokerImpl::DurableReply durable(*impl_);
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  return impl_->buffers_->Create(*dev, caller.session_id, size_bytes, placement, pool,
                                 /*backs_alloc=*/false);
}

absl::Status Broker::FreeBuffer(const Caller& caller, uint64_t buffer_id) {
  BrokerImpl::DurableReply durable(*impl_);
  // The owner can always free: its exports are revoked and their imports
  // unmapped first (imports' references do not keep it alive); the owner's
  // own mappings do. Checked once before revoking (so a refused free
  // revokes nothing) and again at the free.
  RETURN_IF_ERROR(impl_->buffers_->CheckFree(caller, buffer_id));
  impl_->RevokeExports(impl_->buffers_->ExportsOf(buffer_id));
  return impl_->buffers_->Free(caller, buffer_id);
}

absl::StatusOr<BufferInfo> Broker::GetBuffer(const Caller& caller, uint64_t buffer_id) const {
  return impl_->buffers_->Get(caller, buffer_id);
}

}  // namespace iommu::core
