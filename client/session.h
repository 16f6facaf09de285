// SPDX-License-Identifier: Apache-2.0
// A session lease kept alive in the background.
//
// Session::Open calls OpenSession, then a background thread sends KeepAlive
// every ttl/3 (retried on UNAVAILABLE like every idempotent call). Calls made
// through session.client() carry `iommu-session-id`, so what they create
// belongs to the session: when it closes, or its lease expires because this
// process died, the daemon unmaps and frees all of it.
//
// Destruction closes the session (CloseSession). Abandon() stops the
// keep-alive without closing, leaving the lease to expire (what a crash does).
//
// Thread-safe: client(), id(), ttl() and last_keepalive_status() may be
// called from any thread; Close() and Abandon() from the owner.
#ifndef IOMMU_CLIENT_SESSION_H_
#define IOMMU_CLIENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace iommu::client {

class Session {
 public:
  // ttl zero: the daemon's default lease. A session belongs to the device
  // that opens it (`device`, else the client's): only that device can
  // create resources under it.
  static absl::StatusOr<std::unique_ptr<Session>> Open(const Client& client,
                                                       absl::Duration ttl = absl::ZeroDuration(),
                                                       const std::string& device = "");
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  uint64_t id() const { return client_.session_id(); }
  absl::Duration ttl() const { return ttl_; }
  // The client whose calls belong to this session.
  const Client& client() const { return client_; }
  // OK until a keep-alive fails; then the failure (the lease may be lost).
  absl::Status last_keepalive_status() const;
  // The number of keep-alives sent so far.
  uint64_t keepalives_sent() const;

  // Stops the keep-alive thread and closes the session; idempotent.
  absl::Status Close();
  // Stops the keep-alive thread without closing: the lease expires on its own.
  void Abandon();

 private:
  Session(Client client, absl::Duration ttl);
  void KeepAliveLoop();
  void StopThread();

  const Client client_;
  const absl::Duration ttl_;
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status last_keepalive_ ABSL_GUARDED_BY(mu_);
  uint64_t keepalives_sent_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // joined by StopThread(); owned by the owner thread
};

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_SESSION_H_
