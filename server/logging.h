// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_LOGGING_H_
#define IOMMU_SERVER_LOGGING_H_

// Logging at the server edge (core never logs). spdlog to stderr, as text
//   2026-11-21T06:00:00.123Z W rpc=iommu.v1.Dma/Map device="nic0" code=NOT_FOUND msg="..."
// or, with --log_format=json, one JSON object per line with the same keys.
// One line per failed call (warning for server-side codes, info for the
// caller's mistakes), access lines for successful calls at debug. What a
// line echoes of a request is bounded: the device name to
// core::kMaxEchoedBytes, the message to kMaxStatusMessageBytes, each cut and
// marked with its length, so no request makes a line longer than ~1.5 KiB.
// libprotobuf's own messages go through the same logger (event "protobuf"),
// never to stderr in a format of their own.
//
// Thread-safe (spdlog's default logger is).

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu::server {

enum class LogFormat { kText, kJson };

struct LogOptions {
  std::string level = "info";  // trace, debug, info, warning, error, critical, off
  LogFormat format = LogFormat::kText;
};

// Installs the stderr logger. INVALID_ARGUMENT naming `log_level`.
absl::Status InitLogging(const LogOptions& options);

// A free-form event ("listening", "draining", ...) with a detail string
// (JSON: {"event": ..., "detail": ...}).
void LogInfo(absl::string_view event, absl::string_view detail = "");
void LogWarning(absl::string_view event, absl::string_view detail = "");
void LogError(absl::string_view event, absl::string_view detail = "");

// The end of one call: failures at info/warning, successes at debug only
// (checked before any formatting, so a successful call pays one branch).
void LogCall(absl::string_view service, absl::string_view method, absl::string_view device,
             const absl::Status& status, int64_t elapsed_ns);

// While one is alive, libprotobuf's messages on this thread are collected in
// it instead of logged: a request that fails to parse gets protobuf's reason
// in its status (and so in its call's one log line). Not nestable.
class ProtobufLogCapture {
 public:
  ProtobufLogCapture();
  ~ProtobufLogCapture();
  ProtobufLogCapture(const ProtobufLogCapture&) = delete;
  ProtobufLogCapture& operator=(const ProtobufLogCapture&) = delete;

  // What libprotobuf said, bounded; empty when it said nothing.
  const std::string& text() const { return text_; }
  // Called by the log handler.
  void Append(const std::string& message);

 private:
  std::string text_;
};

}  // namespace iommu::server

#endif  // IOMMU_SERVER_LOGGING_H_
