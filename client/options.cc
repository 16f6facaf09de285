// SPDX-License-Identifier: Apache-2.0
#include "client/options.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/status.h"

namespace iommu::client {
namespace {

bool IsHostPort(absl::string_view target) {
  const size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  uint32_t port = 0;
  return absl::SimpleAtoi(target.substr(colon + 1), &port) && port > 0 && port <= 65535;
}

}  // namespace

absl::Status ValidateOptions(const Options& options) {
  const std::string& target = options.target;
  if (absl::StartsWith(target, "unix:")) {
    if (target.size() <= 5 || target[5] != '/') {
      return InvalidField("target", target, "a unix: target needs an absolute path");
    }
  } else if (!IsHostPort(target)) {
    return InvalidField("target", target, "must be unix:/path or host:port");
  }
  const Credentials& c = options.credentials;
  const bool client_cert = !c.tls_cert_file.empty() || !c.tls_key_file.empty();
  switch (c.kind) {
    case Credentials::Kind::kNone:
      if (!c.token.empty())
        return InvalidField("credentials.token", "<set>", "given with no token kind");
      if (client_cert)
        return InvalidField("credentials.tls_cert_file", c.tls_cert_file, "given without mTLS");
      if (!c.tls_ca_file.empty())
        return InvalidField("credentials.tls_ca_file", c.tls_ca_file, "given without TLS");
      if (!c.tls_server_name.empty()) {
        return InvalidField("credentials.tls_server_name", c.tls_server_name, "given without TLS");
      }
      break;
    case Credentials::Kind::kToken:
      if (c.token.empty()) return InvalidField("credentials.token", "", "must be non-empty");
      if (c.token.find_first_of(" \t\r\n") != std::string::npos) {
        return InvalidField("credentials.token", "<redacted>", "must not contain whitespace");
      }
      if (client_cert)
        return InvalidField("credentials.tls_cert_file", c.tls_cert_file, "given with a token");
      if (c.tls_ca_file.empty()) {
        return InvalidField(
            "credentials.tls_ca_file", "",
            "a token is sent only over TLS: give the CA that signed the daemon's certificate");
      }
      break;
    case Credentials::Kind::kMtls:
      if (c.tls_cert_file.empty())
        return InvalidField("credentials.tls_cert_file", "", "mTLS needs a certificate");
      if (c.tls_key_file.empty())
        return InvalidField("credentials.tls_key_file", "", "mTLS needs a key");
      if (c.tls_ca_file.empty())
        return InvalidField("credentials.tls_ca_file", "", "mTLS needs a CA");
      if (!c.token.empty()) return InvalidField("credentials.token", "<set>", "given with mTLS");
      break;
  }
  if (options.default_deadline <= absl::ZeroDuration()) {
    return InvalidField("default_deadline", absl::FormatDuration(options.default_deadline),
                        "must be > 0");
  }
  if (options.connect_timeout < absl::ZeroDuration()) {
    return InvalidField("connect_timeout", absl::FormatDuration(options.connect_timeout),
                        "must be >= 0");
  }
  if (options.limits.max_message_bytes == 0 || options.limits.max_message_bytes > (1u << 30)) {
    return InvalidField("limits.max_message_bytes", options.limits.max_message_bytes,
                        "must be 1..2^30");
  }
  if (options.limits.max_batch_ops == 0) {
    return InvalidField("limits.max_batch_ops", uint64_t{0}, "must be >= 1");
  }
  const RetryPolicy& r = options.retry;
  if (r.max_attempts < 1)
    return InvalidField("retry.max_attempts", absl::StrCat(r.max_attempts), "must be >= 1");
  if (r.initial_backoff <= absl::ZeroDuration() || r.max_backoff < r.initial_backoff) {
    return InvalidField("retry.initial_backoff", absl::FormatDuration(r.initial_backoff),
                        "must be > 0 and <= retry.max_backoff");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileForField(const std::string& field, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return FieldStatus(absl::StatusCode::kNotFound, field, path, "cannot read the file");
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFileForField("token_file", path);
  if (!contents.ok()) return contents.status();
  for (absl::string_view line : absl::StrSplit(*contents, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    return std::string(words.front());
  }
  return InvalidField("token_file", path, "holds no token");
}

}  // namespace iommu::client
