#ifndef IOMMU_SERVER_AUTH_H_
#define IOMMU_SERVER_AUTH_H_

// Who a call is, and whom it may act as (DESIGN §3, identity).
//
//   --auth=none   no credential; the request's `device` field is trusted and
//                 an empty `device` acts as the admin (demos only).
//   --auth=token  metadata `authorization: Bearer <token>`; the token file
//                 maps tokens to `<device-name>` or `admin`, one per line
//                 (`<token> <identity>`, '#' starts a comment).
//   --auth=mtls   the client certificate (verified against --tls_ca) names
//                 the identity: URI SAN spiffe://iommu-broker/device/<name> or
//                 spiffe://iommu-broker/admin, or DNS SAN <name>.device.iommu.
//                 The same TLS credentials serve TCP and Unix sockets.
//
// With a credential, a device identity acts only as itself (the request's
// `device` empty or equal, else PERMISSION_DENIED); the admin acts as the
// request's `device` (empty: the admin itself). A missing or unknown
// credential is UNAUTHENTICATED. What each identity may do beyond that is the
// core's decision, given the Caller.
//
// Thread-safe: immutable after Create.

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "core/broker_types.h"

namespace iommu::server {

enum class AuthMode { kNone, kToken, kMtls };
// "none", "token", "mtls".
const char* AuthModeName(AuthMode mode);

struct AuthOptions {
  AuthMode mode = AuthMode::kNone;
  std::string token_file;  // --auth=token
  std::string tls_cert;    // --auth=mtls: PEM files
  std::string tls_key;
  std::string tls_ca;
};

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
  // Reads the token file or the PEM files. INVALID_ARGUMENT / NOT_FOUND
  // naming the flag for a missing or malformed file.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const AuthOptions& options);

  AuthMode mode() const { return options_.mode; }
  // TLS with client-certificate verification for --auth=mtls; insecure otherwise.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;

  // The caller's identity from its credential. UNAUTHENTICATED when the
  // credential is missing or unknown.
  absl::StatusOr<Identity> Authenticate(const grpc::ServerContextBase& context) const;

  // The core Caller for `identity` acting as `request_device`, owning
  // resources for `session_id`. PERMISSION_DENIED naming `device` when a
  // device identity names another device.
  static absl::StatusOr<core::Caller> ActAs(const Identity& identity,
                                            const std::string& request_device,
                                            uint64_t session_id);

  // The `iommu-session-id` metadata: 0 when absent; INVALID_ARGUMENT naming
  // it when not a decimal number.
  static absl::StatusOr<uint64_t> SessionId(const grpc::ServerContextBase& context);

 private:
  explicit Authenticator(AuthOptions options) : options_(std::move(options)) {}
  absl::StatusOr<Identity> FromToken(const grpc::ServerContextBase& context) const;
  absl::StatusOr<Identity> FromCertificate(const grpc::ServerContextBase& context) const;

  AuthOptions options_;
  absl::flat_hash_map<std::string, Identity> tokens_;
  std::string cert_pem_, key_pem_, ca_pem_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_AUTH_H_
