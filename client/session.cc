// SPDX-License-Identifier: Apache-2.0
#include "client/session.h"

#include <utility>

#include "client/status.h"

namespace iommu::client {

absl::StatusOr<std::unique_ptr<Session>> Session::Open(const Client& client, absl::Duration ttl,
                                                       const std::string& device) {
  if (ttl < absl::ZeroDuration()) {
    return InvalidField("ttl_ms", absl::FormatDuration(ttl), "must be >= 0");
  }
  v1::OpenSessionRequest request;
  request.set_device(device);
  request.set_ttl_ms(absl::ToInt64Milliseconds(ttl));
  absl::StatusOr<v1::OpenSessionResponse> response = client.OpenSession(std::move(request));
  if (!response.ok()) return response.status();
  return std::unique_ptr<Session>(new Session(client.WithSession(response->session_id()),
                                              absl::Milliseconds(response->ttl_ms())));
}

Session::Session(Client client, absl::Duration ttl) : client_(std::move(client)), ttl_(ttl) {
  thread_ = std::thread([this] { KeepAliveLoop(); });
}

Session::~Session() { (void)Close(); }

void Session::KeepAliveLoop() {
  // A lease of 0 ms would spin; keep-alive at least every millisecond.
  const absl::Duration period = std::max(ttl_ / 3, absl::Milliseconds(1));
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), period)) return;
    }
    v1::KeepAliveRequest request;
    request.set_session_id(id());
    absl::Status status = client_.KeepAlive(std::move(request)).status();
    absl::MutexLock lock(&mu_);
    ++keepalives_sent_;
    if (last_keepalive_.ok()) last_keepalive_ = status;
  }
}

void Session::StopThread() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status Session::last_keepalive_status() const {
  absl::MutexLock lock(&mu_);
  return last_keepalive_;
}

uint64_t Session::keepalives_sent() const {
  absl::MutexLock lock(&mu_);
  return keepalives_sent_;
}

absl::Status Session::Close() {
  StopThread();
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    closed_ = true;
  }
  v1::CloseSessionRequest request;
  request.set_session_id(id());
  return client_.CloseSession(std::move(request)).status();
}

void Session::Abandon() {
  StopThread();
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

}  // namespace iommu::client
