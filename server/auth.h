// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_AUTH_H_
#define IOMMU_SERVER_AUTH_H_

// Who a call is, and whom it may act as (docs/design.md#identity,
// docs/security.md).
//
//   --auth=none   no credential; the request's `device` field is trusted and
//                 an empty `device` acts as the admin (demos only). Plaintext;
//                 the daemon listens on loopback and unix: addresses only
//                 unless --auth_none_allow_remote (IsLocalListenAddress).
//   --auth=token  metadata `authorization: Bearer <token>`, over TLS: the
//                 server certificate (--tls_cert, --tls_key) serves every
//                 listener, no client certificate is asked for. The token
//                 file maps tokens to a device of the topology or `admin`, one
//                 per line (`<token> <identity>`, '#' starts a comment); a
//                 token has at least kMinTokenChars characters.
//   --auth=mtls   TLS as for tokens, and the client certificate (verified
//                 against --tls_ca) names the identity: URI SAN
//                 spiffe://iommu-broker/device/<name> or
//                 spiffe://iommu-broker/admin, or DNS SAN <name>.device.iommu.
//
// With a credential the same TLS credentials serve TCP and Unix sockets, so a
// bearer token or a certificate never crosses a listener in clear.
//
// With a credential, a device identity acts only as itself (the request's
// `device` empty or equal, else PERMISSION_DENIED); the admin acts as the
// request's `device` (empty: the admin itself). A missing or unknown
// credential is UNAUTHENTICATED. What each identity may do beyond that is the
// core's decision, given the Caller.
//
// Thread-safe: immutable after Create.

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/broker/broker_types.h"

namespace iommu::server {

enum class AuthMode { kNone, kToken, kMtls };
// "none", "token", "mtls".
const char* AuthModeName(AuthMode mode);

// The shortest bearer token the token file may hold.
inline constexpr size_t kMinTokenChars = 16;

struct AuthOptions {
  AuthMode mode = AuthMode::kNone;
  std::string token_file;  // --auth=token
  // PEM files. The server's certificate and key: required by --auth=token
  // and --auth=mtls. The CA that signs client certificates: --auth=mtls only.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  // --auth=none: also listen on TCP addresses other hosts can reach.
  bool none_allow_remote = false;
};

// Whether a --listen address is reachable from this host only: unix:/path,
// or TCP on 127.0.0.0/8, [::1] or localhost. Anything else (0.0.0.0, [::],
// an empty host, another address or name) is remote.
bool IsLocalListenAddress(absl::string_view address);

// An authenticated principal.
struct Identity {
  enum class Kind { kUntrusted, kDevice, kAdmin };
  Kind kind = Kind::kUntrusted;  // kUntrusted: --auth=none, trust the request
  std::string device;            // kDevice only
};

// The metadata key carrying the session a call's resources belong to.
inline constexpr char kSessionMetadataKey[] = "iommu-session-id";

class Authenticator {
 public:
  // Reads the token file and the PEM files. INVALID_ARGUMENT / NOT_FOUND
  // naming the flag for a missing, malformed or misplaced file (--tls_ca with
  // --auth=token), naming `token_file` and its file:line for a short token,
  // a duplicate, or a device that is not one of `devices`.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const AuthOptions& options, const absl::flat_hash_set<std::string>& devices);

  AuthMode mode() const { return options_.mode; }
  // --auth=token: TLS with the server certificate, no client certificate
  // asked for. --auth=mtls: TLS that requests a client certificate and
  // verifies it against --tls_ca. --auth=none: insecure.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;

  // The caller's identity from its credential. UNAUTHENTICATED when the
  // credential is missing or unknown.
  absl::StatusOr<Identity> Authenticate(const grpc::ServerContextBase& context) const;

  // The core Caller for `identity` acting as `request_device`, owning
  // resources for `session_id`. PERMISSION_DENIED naming `device` when a
  // device identity names another device.
  static absl::StatusOr<core::Caller> CallerFor(const Identity& identity,
                                                const std::string& request_device,
                                                uint64_t session_id);

  // The `iommu-session-id` metadata: 0 when absent; INVALID_ARGUMENT naming
  // it when not a decimal number.
  static absl::StatusOr<uint64_t> SessionId(const grpc::ServerContextBase& context);

 private:
  explicit Authenticator(AuthOptions options) : options_(std::move(options)) {}
  absl::Status ReadTokens(const absl::flat_hash_set<std::string>& devices);
  absl::StatusOr<Identity> FromToken(const grpc::ServerContextBase& context) const;
  absl::StatusOr<Identity> FromCertificate(const grpc::ServerContextBase& context) const;

  AuthOptions options_;
  absl::flat_hash_map<std::string, Identity> tokens_;
  std::string cert_pem_, key_pem_, ca_pem_;  // ca_pem_: --auth=mtls only
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_AUTH_H_
