// Buffers (pinned pages) and the per-device quotas they and mappings charge.

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

}  // namespace

absl::Status DeviceState::ChargeMapping(uint64_t bytes) {
  if (!TryCharge(mappings, 1, quotas.max_mappings)) {
    return FieldError(absl::StatusCode::kResourceExhausted, "device", config.name,
                      absl::StrFormat("mapping quota of %d mappings reached", quotas.max_mappings));
  }
  if (!TryCharge(mapped_bytes, bytes, quotas.max_mapped_bytes)) {
    mappings.fetch_sub(1, std::memory_order_relaxed);
    return FieldError(absl::StatusCode::kResourceExhausted, "size_bytes", bytes,
                      absl::StrFormat("device %s would pass its mapped-bytes quota %#x "
                                      "(%#x mapped)",
                                      config.name, quotas.max_mapped_bytes, mapped_bytes.load()));
  }
  return absl::OkStatus();
}

void DeviceState::RefundMapping(uint64_t bytes) {
  mappings.fetch_sub(1, std::memory_order_relaxed);
  mapped_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

absl::Status DeviceState::ChargeBuffer(uint64_t bytes) {
  if (!TryCharge(buffers, 1, quotas.max_buffers)) {
    return FieldError(absl::StatusCode::kResourceExhausted, "device", config.name,
                      absl::StrFormat("buffer quota of %d buffers reached", quotas.max_buffers));
  }
  if (!TryCharge(buffer_bytes, bytes, quotas.max_buffer_bytes)) {
    buffers.fetch_sub(1, std::memory_order_relaxed);
    return FieldError(absl::StatusCode::kResourceExhausted, "size_bytes", bytes,
                      absl::StrFormat("device %s would pass its buffer-bytes quota %#x",
                                      config.name, quotas.max_buffer_bytes));
  }
  return absl::OkStatus();
}

void DeviceState::RefundBuffer(uint64_t bytes) {
  buffers.fetch_sub(1, std::memory_order_relaxed);
  buffer_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace internal

absl::StatusOr<BufferInfo> Broker::AllocBuffer(const Caller& caller, const std::string& device,
                                               uint64_t size_bytes, Placement placement,
                                               const std::string& pool) {
  ASSIGN_OR_RETURN(auto* dev, impl_->ActAs(caller, device));
  ASSIGN_OR_RETURN(BrokerImpl::SessionPin pin, impl_->PinSession(caller));
  return impl_->buffers_->Create(*dev, caller.session_id, size_bytes, placement, pool,
                                 /*backs_alloc=*/false);
}

absl::Status Broker::FreeBuffer(const Caller& caller, uint64_t buffer_id) {
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
