// SPDX-License-Identifier: Apache-2.0
// The authorisation model, in one place (docs/security.md states it and
// names the tests behind each rule).
//
// Identities: the admin (the platform) and devices. A device acts only as
// itself, maps only memory it owns (its buffers, its Alloc pages) or was
// granted (an export token that names it or anyone), and reaches domains
// only through the ones it may use: its default domain, domains it created,
// and domains whose creator granted it. IDENTITY and BLOCKED domains are the
// platform's decision; an untrusted device never leaves a strict translated
// domain (DMA or UNMANAGED), whoever asks. A session id is bound to the
// device that opened it. Where a device names an object that is not its own,
// the answer is the one for an object that does not exist.

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/errors.h"
#include "core/base/status_macros.h"
#include "core/broker/broker.h"
#include "core/broker/broker_impl.h"

namespace iommu::core {

using internal::Domain;
using internal::Smmu;

namespace {

bool IsStrictTranslated(DomainType type) {
  return type == DomainType::kDma || type == DomainType::kUnmanaged;
}

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

absl::StatusOr<BrokerImpl::DeviceState*> BrokerImpl::ActAs(const Caller& caller,
                                                           const std::string& device) const {
  // Acting as another device is refused before the name is looked up, so
  // the answer does not tell whether that device exists.
  if (!caller.admin && device != caller.device) {
    return FieldError(
        absl::StatusCode::kPermissionDenied, "device", device,
        absl::StrFormat("caller is device \"%s\" and may act only as itself", caller.device));
  }
  auto it = devices_.find(device);
  if (it == devices_.end()) {
    return FieldError(absl::StatusCode::kNotFound, "device", device, "no such device");
  }
  return it->second.get();
}

absl::Status BrokerImpl::CheckCaller(const Caller& caller) const {
  if (caller.admin || devices_.contains(caller.device)) return absl::OkStatus();
  return FieldError(absl::StatusCode::kNotFound, "device", caller.device, "no such device");
}

bool BrokerImpl::MayUse(const DeviceState& dev, const Domain& d) const {
  if (d.is_default()) return dev.default_domain.get() == &d;
  return d.owner() == dev.config.name || Contains(d.granted(), dev.config.name);
}

bool BrokerImpl::MaySee(const Caller& caller, const Domain& d) const {
  if (caller.admin) return true;
  auto dev = devices_.find(caller.device);
  if (dev == devices_.end()) return false;
  return MayUse(*dev->second, d) || dev->second->current.get() == &d;
}

absl::Status BrokerImpl::CheckDeviceList(absl::string_view field,
                                         const std::vector<std::string>& names) const {
  if (names.size() > devices_.size()) {
    return InvalidField(
        field, names.size(),
        absl::StrFormat("lists more devices than the topology's %d", devices_.size()));
  }
  absl::flat_hash_set<absl::string_view> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string item = absl::StrFormat("%s[%d]", field, i);
    if (!devices_.contains(names[i])) {
      return FieldError(absl::StatusCode::kNotFound, item, names[i], "no such device");
    }
    if (!seen.insert(names[i]).second) {
      return FieldError(absl::StatusCode::kInvalidArgument, item, names[i], "listed twice");
    }
  }
  return absl::OkStatus();
}

absl::Status BrokerImpl::CheckCreateDomain(const Caller& caller, const Smmu& smmu,
                                           const CreateDomainRequest& request) const {
  const char* type = DomainTypeName(request.type);
  if (!caller.admin) {
    ASSIGN_OR_RETURN(const DeviceState* dev, ActAs(caller, caller.device));
    if (dev->smmu != &smmu) {
      return FieldError(
          absl::StatusCode::kPermissionDenied, "smmu", request.smmu,
          absl::StrFormat("device %s sits behind SMMU %s", caller.device, dev->smmu->config.name));
    }
    if (request.type == DomainType::kIdentity || request.type == DomainType::kBlocked) {
      return FieldError(absl::StatusCode::kPermissionDenied, "type", type,
                        "IDENTITY and BLOCKED domains are the platform's decision: only an "
                        "admin may create them");
    }
    if (!dev->config.trusted && !IsStrictTranslated(request.type)) {
      return FieldError(absl::StatusCode::kPermissionDenied, "type", type,
                        absl::StrFormat("untrusted device %s may create only strict DMA or "
                                        "UNMANAGED domains",
                                        caller.device));
    }
  }
  RETURN_IF_ERROR(CheckDeviceList("granted_devices", request.granted_devices));
  for (size_t i = 0; i < request.granted_devices.size(); ++i) {
    const std::string field = absl::StrFormat("granted_devices[%d]", i);
    const std::string& name = request.granted_devices[i];
    const DeviceState& dev = *devices_.at(name);
    if (dev.smmu != &smmu) {
      return FieldError(
          absl::StatusCode::kFailedPrecondition, field, name,
          absl::StrFormat("sits behind SMMU %s, not %s", dev.smmu->config.name, smmu.config.name));
    }
    if (!dev.config.trusted && !IsStrictTranslated(request.type)) {
      return FieldError(absl::StatusCode::kFailedPrecondition, field, name,
                        absl::StrFormat("an untrusted device may be granted only strict DMA or "
                                        "UNMANAGED domains, not %s",
                                        type));
    }
  }
  return absl::OkStatus();
}

absl::Status BrokerImpl::CheckAttach(const Caller& caller, const DeviceState& dev,
                                     const Domain& d) const {
  if (!caller.admin && !MayUse(dev, d)) {
    // Not yours answers as does not exist.
    return FieldError(absl::StatusCode::kNotFound, "domain_id", d.id(), "no such domain");
  }
  if (d.is_default() && dev.default_domain.get() != &d) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d.id(),
                      "another device's default domain");
  }
  if (&d.smmu() != dev.smmu) {
    return FieldError(
        absl::StatusCode::kFailedPrecondition, "domain_id", d.id(),
        absl::StrFormat("domain is on SMMU %s, device %s is behind %s", d.smmu().config.name,
                        dev.config.name, dev.smmu->config.name));
  }
  if (!dev.config.trusted && !IsStrictTranslated(d.type())) {
    return FieldError(absl::StatusCode::kFailedPrecondition, "domain_id", d.id(),
                      absl::StrFormat("untrusted device %s must stay in a strict translated "
                                      "domain (DMA or UNMANAGED), not %s",
                                      dev.config.name, DomainTypeName(d.type())));
  }
  return absl::OkStatus();
}

absl::Status BrokerImpl::CheckImport(const DeviceState& importer, const internal::ExportRecord& e,
                                     const std::string& token, DmaDirection direction) const {
  if (!e.importers_allowed.empty() && !Contains(e.importers_allowed, importer.config.name)) {
    return FieldError(absl::StatusCode::kNotFound, "import_token", token,
                      "no such export (never made, revoked, or its buffer was freed)");
  }
  if (!e.writable && direction != DmaDirection::kToDevice) {
    return FieldError(absl::StatusCode::kPermissionDenied, "direction",
                      direction == DmaDirection::kFromDevice ? "FROM_DEVICE" : "BIDIRECTIONAL",
                      "the export grants read-only access: import it TO_DEVICE");
  }
  return absl::OkStatus();
}

absl::StatusOr<BrokerImpl::SessionPin> BrokerImpl::PinSession(const Caller& caller) const {
  if (caller.session_id == 0) return SessionPin();
  auto no_such = [&] {
    return FieldError(absl::StatusCode::kNotFound, "session_id", caller.session_id,
                      "no such session");
  };
  std::shared_ptr<SessionGate> gate;
  {
    absl::ReaderMutexLock l(&registry_mu_);
    const SessionInfo* s = sessions_.Find(caller.session_id);
    if (s == nullptr || (!caller.admin && s->device != caller.device)) return no_such();
    gate = s->gate;
  }
  gate->mu.ReaderLock();
  if (gate->closed) {
    gate->mu.ReaderUnlock();
    return no_such();
  }
  return SessionPin(std::move(gate));
}

void BrokerImpl::CloseGate(SessionGate& gate) {
  absl::MutexLock l(&gate.mu);
  gate.closed = true;
}

Quotas BrokerImpl::EffectiveQuotas(const DeviceConfig& cfg) const {
  const Quotas& dflt = options_.default_quotas;
  auto pick = [](uint64_t device, uint64_t broker, uint64_t fair) {
    return device != 0 ? device : broker != 0 ? broker : fair;
  };
  const Smmu* smmu = smmu_by_name_.at(cfg.smmu);
  return Quotas{
      .max_mapped_bytes = pick(cfg.quotas.max_mapped_bytes, dflt.max_mapped_bytes, UINT64_MAX),
      .max_mappings = pick(cfg.quotas.max_mappings, dflt.max_mappings, UINT64_MAX),
      .max_buffers = pick(cfg.quotas.max_buffers, dflt.max_buffers, UINT64_MAX),
      .max_buffer_bytes =
          pick(cfg.quotas.max_buffer_bytes, dflt.max_buffer_bytes, fair_buffer_bytes_),
      .max_domains = pick(cfg.quotas.max_domains, dflt.max_domains, fair_domains_.at(smmu)),
      .max_sessions = pick(cfg.quotas.max_sessions, dflt.max_sessions, UINT64_MAX),
      .max_exports = pick(cfg.quotas.max_exports, dflt.max_exports, UINT64_MAX),
  };
}

}  // namespace iommu::core
