// SPDX-License-Identifier: Apache-2.0
#include "server/auth.h"

#include <arpa/inet.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/server_credentials.h>
#include <netinet/in.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/base/errors.h"

namespace iommu::server {
namespace {

constexpr absl::string_view kSpiffeDevicePrefix = "spiffe://iommu-broker/device/";
constexpr absl::string_view kSpiffeAdmin = "spiffe://iommu-broker/admin";
constexpr absl::string_view kDnsDeviceSuffix = ".device.iommu";
constexpr absl::string_view kBearerPrefix = "Bearer ";

absl::StatusOr<std::string> ReadFile(const char* flag, const std::string& path, AuthMode mode) {
  if (path.empty()) {
    return core::FieldError(absl::StatusCode::kInvalidArgument, flag, "",
                            absl::StrCat("required by --auth=", AuthModeName(mode)));
  }
  std::ifstream in(path);
  if (!in) return core::FieldError(absl::StatusCode::kNotFound, flag, path, "cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status Unauthenticated(absl::string_view what, absl::string_view value,
                             absl::string_view why) {
  return core::FieldError(absl::StatusCode::kUnauthenticated, what, value, why);
}

// A certificate SAN as an identity, or nullopt when it names none.
std::optional<Identity> IdentityFromSan(absl::string_view san) {
  if (san == kSpiffeAdmin) return Identity{.kind = Identity::Kind::kAdmin};
  if (absl::StartsWith(san, kSpiffeDevicePrefix)) {
    absl::string_view name = san.substr(kSpiffeDevicePrefix.size());
    if (!name.empty() && !absl::StrContains(name, '/')) {
      return Identity{.kind = Identity::Kind::kDevice, .device = std::string(name)};
    }
  }
  if (absl::EndsWith(san, kDnsDeviceSuffix) && san.size() > kDnsDeviceSuffix.size()) {
    absl::string_view name = san.substr(0, san.size() - kDnsDeviceSuffix.size());
    if (!absl::StrContains(name, '.')) {
      return Identity{.kind = Identity::Kind::kDevice, .device = std::string(name)};
    }
  }
  return std::nullopt;
}

}  // namespace

const char* AuthModeName(AuthMode mode) {
  switch (mode) {
    case AuthMode::kNone:
      return "none";
    case AuthMode::kToken:
      return "token";
    case AuthMode::kMtls:
      return "mtls";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const AuthOptions& options, const absl::flat_hash_set<std::string>& devices) {
  std::unique_ptr<Authenticator> auth(new Authenticator(options));
  if (options.mode == AuthMode::kToken) {
    absl::Status tokens = auth->ReadTokens(devices);
    if (!tokens.ok()) return tokens;
  }
  if (options.mode == AuthMode::kToken || options.mode == AuthMode::kMtls) {
    auto cert = ReadFile("tls_cert", options.tls_cert, options.mode);
    if (!cert.ok()) return cert.status();
    auto key = ReadFile("tls_key", options.tls_key, options.mode);
    if (!key.ok()) return key.status();
    if (options.mode == AuthMode::kMtls) {
      auto ca = ReadFile("tls_ca", options.tls_ca, options.mode);
      if (!ca.ok()) return ca.status();
      auth->ca_pem_ = *std::move(ca);
    } else if (!options.tls_ca.empty()) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "tls_ca", options.tls_ca,
                              "is the CA of client certificates, for --auth=mtls; --auth=token "
                              "asks for none");
    }
    auth->cert_pem_ = *std::move(cert);
    auth->key_pem_ = *std::move(key);
    if (!absl::StrContains(auth->cert_pem_, "-----BEGIN CERTIFICATE-----")) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "tls_cert", options.tls_cert,
                              "holds no PEM certificate");
    }
    if (!absl::StrContains(auth->key_pem_, "PRIVATE KEY-----")) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "tls_key", options.tls_key,
                              "holds no PEM private key");
    }
    if (options.mode == AuthMode::kMtls &&
        !absl::StrContains(auth->ca_pem_, "-----BEGIN CERTIFICATE-----")) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "tls_ca", options.tls_ca,
                              "holds no PEM certificate");
    }
  }
  return auth;
}

absl::Status Authenticator::ReadTokens(const absl::flat_hash_set<std::string>& devices) {
  const std::string& path = options_.token_file;
  auto text = ReadFile("token_file", path, options_.mode);
  if (!text.ok()) return text.status();
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    if (words.size() != 2) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "token_file", where,
                              "each line must be `<token> <device-name|admin>`");
    }
    // The token itself never appears in a message.
    if (words[0].size() < kMinTokenChars) {
      return core::FieldError(
          absl::StatusCode::kInvalidArgument, "token_file", where,
          absl::StrCat("the token has ", words[0].size(), " characters; a token needs at least ",
                       kMinTokenChars, " (e.g. `openssl rand -hex 32`)"));
    }
    Identity id{.kind = Identity::Kind::kAdmin};
    if (words[1] != "admin") {
      if (!devices.contains(words[1])) {
        return core::FieldError(
            absl::StatusCode::kInvalidArgument, "token_file", where,
            absl::StrCat("names device \"", words[1], "\", which is not in the topology"));
      }
      id = Identity{.kind = Identity::Kind::kDevice, .device = std::string(words[1])};
    }
    if (!tokens_.emplace(std::string(words[0]), std::move(id)).second) {
      return core::FieldError(absl::StatusCode::kInvalidArgument, "token_file", where,
                              "duplicate token");
    }
  }
  if (tokens_.empty()) {
    return core::FieldError(absl::StatusCode::kInvalidArgument, "token_file", path,
                            "holds no token");
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> Authenticator::ServerCredentials() const {
  switch (options_.mode) {
    case AuthMode::kNone:
      return grpc::InsecureServerCredentials();
    case AuthMode::kToken: {
      grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      ssl.pem_key_cert_pairs.push_back({key_pem_, cert_pem_});
      return grpc::SslServerCredentials(ssl);
    }
    case AuthMode::kMtls: {
      // Request and verify a client certificate, but let a client without one
      // connect, so that it gets UNAUTHENTICATED rather than a failed handshake.
      grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
      ssl.pem_root_certs = ca_pem_;
      ssl.pem_key_cert_pairs.push_back({key_pem_, cert_pem_});
      return grpc::SslServerCredentials(ssl);
    }
  }
  return grpc::InsecureServerCredentials();
}

bool IsLocalListenAddress(absl::string_view address) {
  if (absl::StartsWith(address, "unix:")) return true;
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return false;
  absl::string_view host = address.substr(0, colon);
  if (absl::ConsumePrefix(&host, "[") && !absl::ConsumeSuffix(&host, "]")) return false;
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  const std::string literal(host);
  in_addr v4{};
  if (inet_pton(AF_INET, literal.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, literal.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

absl::StatusOr<Identity> Authenticator::Authenticate(const grpc::ServerContextBase& context) const {
  switch (options_.mode) {
    case AuthMode::kNone:
      return Identity{};
    case AuthMode::kToken:
      return FromToken(context);
    case AuthMode::kMtls:
      return FromCertificate(context);
  }
  return Identity{};
}

absl::StatusOr<Identity> Authenticator::FromToken(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return Unauthenticated("authorization", "", "missing `authorization: Bearer <token>` metadata");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, kBearerPrefix)) {
    return Unauthenticated("authorization", "", "must be `Bearer <token>`");
  }
  auto token = tokens_.find(value.substr(kBearerPrefix.size()));
  if (token == tokens_.end()) return Unauthenticated("authorization", "", "unknown token");
  return token->second;
}

absl::StatusOr<Identity> Authenticator::FromCertificate(
    const grpc::ServerContextBase& context) const {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) {
    return Unauthenticated("client_certificate", "", "missing or unverified");
  }
  std::optional<Identity> found;
  std::string first_san;
  for (const grpc::string_ref& san : auth->FindPropertyValues(GRPC_X509_SAN_PROPERTY_NAME)) {
    absl::string_view text(san.data(), san.size());
    if (first_san.empty()) first_san = std::string(text);
    std::optional<Identity> id = IdentityFromSan(text);
    if (!id) continue;
    if (found && (found->kind != id->kind || found->device != id->device)) {
      return Unauthenticated("client_certificate.san", text, "names more than one identity");
    }
    found = std::move(id);
  }
  if (!found) {
    return Unauthenticated("client_certificate.san", first_san,
                           "names no spiffe://iommu-broker/device/<name>, "
                           "spiffe://iommu-broker/admin or <name>.device.iommu");
  }
  return *found;
}

absl::StatusOr<core::Caller> Authenticator::CallerFor(const Identity& identity,
                                                      const std::string& request_device,
                                                      uint64_t session_id) {
  switch (identity.kind) {
    case Identity::Kind::kUntrusted:
      if (request_device.empty()) return core::Caller{.admin = true, .session_id = session_id};
      return core::Caller::Device(request_device, session_id);
    case Identity::Kind::kAdmin:
      return core::Caller{.device = request_device, .admin = true, .session_id = session_id};
    case Identity::Kind::kDevice:
      if (!request_device.empty() && request_device != identity.device) {
        return core::FieldError(absl::StatusCode::kPermissionDenied, "device", request_device,
                                absl::StrCat("the credential is device \"", identity.device,
                                             "\", which may act only as itself"));
      }
      return core::Caller::Device(identity.device, session_id);
  }
  return core::Caller::Device(request_device, session_id);
}

absl::StatusOr<uint64_t> Authenticator::SessionId(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kSessionMetadataKey);
  if (it == metadata.end()) return 0;
  absl::string_view text(it->second.data(), it->second.size());
  uint64_t id = 0;
  if (!absl::SimpleAtoi(text, &id) || id == 0) {
    return core::FieldError(absl::StatusCode::kInvalidArgument, kSessionMetadataKey, text,
                            "must be a non-zero decimal session id");
  }
  return id;
}

}  // namespace iommu::server
