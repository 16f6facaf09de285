// SPDX-License-Identifier: Apache-2.0
// Connection options of the C++ SDK: where the daemon is, who the caller is,
// how it proves it, and the default deadline and retry policy of its calls.
//
// A plain aggregate filled by the caller (iommuctl's main, a test, a driver)
// and checked once by ValidateOptions() before Client::Connect dials.
#ifndef IOMMU_CLIENT_OPTIONS_H_
#define IOMMU_CLIENT_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace iommu::client {

// How the caller authenticates (the daemon's --auth mode must match).
//   kNone   plaintext, no credential (--auth=none).
//   kToken  TLS verified against tls_ca_file, and the bearer token on every
//           call (--auth=token); the token never travels in clear.
//   kMtls   TLS with a client certificate (--auth=mtls).
struct Credentials {
  enum class Kind { kNone, kToken, kMtls };
  Kind kind = Kind::kNone;
  // kToken: sent as `authorization: Bearer <token>` on every call.
  std::string token;
  // kMtls: PEM file paths of the client certificate chain and its key.
  std::string tls_cert_file;
  std::string tls_key_file;
  // kToken and kMtls: PEM file path of the CA that signed the daemon's
  // certificate (required).
  std::string tls_ca_file;
  // kToken and kMtls: the name checked against the daemon certificate's SAN.
  // Empty means the target's host, or "localhost" for a unix: target.
  std::string tls_server_name;
};

// Retries on UNAVAILABLE (the daemon restarting, or not up yet) with
// exponential backoff, every attempt within the call's one deadline
// (Options::default_deadline). Every unary call is retried: a read is
// repeated as it is; a mutating call carries a request id that all its
// attempts share, and the daemon answers an id it has already applied with
// the original reply, so the call takes effect exactly once
// (client/request_id.h). Attempts after the first wait for the channel to
// reconnect (gRPC wait_for_ready) rather than fail at once while the daemon
// is down. A Batch stream broken by UNAVAILABLE is reopened under the same
// policy, from the break, and its unanswered messages resent (batch.h).
//
// The deadline, not max_attempts, normally ends the retries: the default
// cap leaves the default 10 s deadline room to ride out a daemon restart of
// a few seconds (the channel finds the new daemon within ~1 s of its start).
struct RetryPolicy {
  int max_attempts = 30;  // >= 1; 1 disables retries
  absl::Duration initial_backoff = absl::Milliseconds(20);
  absl::Duration max_backoff = absl::Seconds(1);
};

// The daemon's limits the SDK relies on (docs/design.md#limits). The
// defaults are iommud's; a client of a daemon started with other
// --max_message_bytes or --max_batch_ops gives it the same values.
//   max_message_bytes  the channel's receive and send limits: the daemon
//                      guarantees every reply fits in its --max_message_bytes,
//                      so receiving up to exactly that never drops a reply of
//                      work done; a request larger is refused before it is
//                      sent (RESOURCE_EXHAUSTED naming the limit).
//   max_batch_ops      BatchStream::Send refuses a message of more operations
//                      (a MapSg counting one more per segment) before sending
//                      it, as the daemon would refuse it whole.
struct MessageLimits {
  uint32_t max_message_bytes = 4u << 20;
  uint32_t max_batch_ops = 8192;
};

struct Options {
  // "unix:/path" (absolute) or "host:port" / "[v6]:port".
  std::string target = "unix:/tmp/iommud.sock";
  // The device this client acts for; filled into every request whose device
  // field is empty. Empty acts as the credential's identity (admin with
  // --auth=none).
  std::string device;
  Credentials credentials;
  // Deadline of every unary call; streams (WatchFaults, Batch) have none.
  absl::Duration default_deadline = absl::Seconds(10);
  RetryPolicy retry;
  // > 0: Connect waits this long for the channel to be ready and fails with
  // UNAVAILABLE otherwise. 0: connect lazily on the first call.
  absl::Duration connect_timeout = absl::ZeroDuration();
  MessageLimits limits;
};

// INVALID_ARGUMENT naming the field and value when the options cannot work:
// empty or malformed target, a token or TLS files given for the wrong kind,
// a missing TLS file name (a token without tls_ca_file among them), a
// non-positive deadline, max_attempts < 1, ...
absl::Status ValidateOptions(const Options& options);

// The bearer token in `path`: the first word of the first line that is not
// empty or a '#' comment (so the daemon's "<token> <device>" file works too).
// NOT_FOUND if the file cannot be read, INVALID_ARGUMENT if it holds no token.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The contents of a file; NOT_FOUND naming `field` and the path otherwise.
absl::StatusOr<std::string> ReadFileForField(const std::string& field, const std::string& path);

}  // namespace iommu::client

#endif  // IOMMU_CLIENT_OPTIONS_H_
