// SPDX-License-Identifier: Apache-2.0
#include "server/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/errors.h"
#include "google/protobuf/stubs/logging.h"
#include "server/limits.h"

namespace iommu::server {
namespace {

LogFormat g_format = LogFormat::kText;  // set once by InitLogging, before any thread starts
thread_local ProtobufLogCapture* t_capture = nullptr;

std::string_view Sv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

// A JSON string literal (quotes included).
std::string Quote(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// Whether a code means the server (not the caller) is in trouble.
bool ServerSide(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kUnavailable:
      return true;
    default:
      return false;
  }
}

void Emit(spdlog::level::level_enum level, absl::string_view event, absl::string_view detail) {
  if (!spdlog::should_log(level)) return;
  if (g_format == LogFormat::kJson) {
    spdlog::log(level, "\"event\":{},\"detail\":{}", Quote(event), Quote(detail));
  } else {
    spdlog::log(level, "{}{}{}", Sv(event), detail.empty() ? "" : " ", Sv(detail));
  }
}

void ProtobufLogHandler(google::protobuf::LogLevel level, const char* filename, int line,
                        const std::string& message) {
  if (t_capture != nullptr && level < google::protobuf::LOGLEVEL_FATAL) {
    t_capture->Append(message);
    return;
  }
  spdlog::level::level_enum spd = spdlog::level::info;
  switch (level) {
    case google::protobuf::LOGLEVEL_INFO:
      spd = spdlog::level::info;
      break;
    case google::protobuf::LOGLEVEL_WARNING:
      spd = spdlog::level::warn;
      break;
    case google::protobuf::LOGLEVEL_ERROR:
      spd = spdlog::level::err;
      break;
    case google::protobuf::LOGLEVEL_FATAL:
      spd = spdlog::level::critical;
      break;
  }
  Emit(spd, "protobuf",
       absl::StrCat(filename == nullptr ? "" : filename, ":", line, ": ",
                    BoundedMessage(message, kMaxStatusMessageBytes)));
}

}  // namespace

void ProtobufLogCapture::Append(const std::string& message) {
  if (text_.size() >= kMaxStatusMessageBytes) return;
  if (!text_.empty()) text_ += "; ";
  text_ += message;
  text_ = BoundedMessage(text_, kMaxStatusMessageBytes);
}

ProtobufLogCapture::ProtobufLogCapture() { t_capture = this; }
ProtobufLogCapture::~ProtobufLogCapture() { t_capture = nullptr; }

absl::Status InitLogging(const LogOptions& options) {
  spdlog::level::level_enum level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("log_level=\"", options.level,
                     "\": must be trace, debug, info, warning, error, critical or off"));
  }
  g_format = options.format;
  auto logger = spdlog::stderr_logger_mt("iommud");
  spdlog::set_default_logger(logger);
  spdlog::set_level(level);
  if (options.format == LogFormat::kJson) {
    spdlog::set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                        spdlog::pattern_time_type::utc);
  } else {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %L %v", spdlog::pattern_time_type::utc);
  }
  spdlog::flush_on(spdlog::level::info);
  google::protobuf::SetLogHandler(&ProtobufLogHandler);
  return absl::OkStatus();
}

void LogInfo(absl::string_view event, absl::string_view detail) {
  Emit(spdlog::level::info, event, detail);
}
void LogWarning(absl::string_view event, absl::string_view detail) {
  Emit(spdlog::level::warn, event, detail);
}
void LogError(absl::string_view event, absl::string_view detail) {
  Emit(spdlog::level::err, event, detail);
}

void LogCall(absl::string_view service, absl::string_view method, absl::string_view device,
             const absl::Status& status, int64_t elapsed_ns) {
  const spdlog::level::level_enum level =
      status.ok() ? spdlog::level::debug
                  : (ServerSide(status.code()) ? spdlog::level::warn : spdlog::level::info);
  if (!spdlog::should_log(level)) return;
  const std::string code = absl::StatusCodeToString(status.code());
  // Both are the client's to choose: bounded (see the header).
  const std::string device_shown =
      device.size() <= core::kMaxEchoedBytes
          ? std::string(device)
          : absl::StrCat(core::Utf8Prefix(device, core::kMaxEchoedBytes), "...(", device.size(),
                         " bytes)");
  const std::string message = BoundedMessage(status.message(), kMaxStatusMessageBytes);
  if (g_format == LogFormat::kJson) {
    spdlog::log(level,
                "\"event\":\"rpc\",\"rpc\":\"{}/{}\",\"device\":{},\"code\":\"{}\","
                "\"elapsed_us\":{:.1f},\"msg\":{}",
                Sv(service), Sv(method), Quote(device_shown), code, elapsed_ns / 1e3,
                Quote(message));
  } else {
    spdlog::log(level, "rpc={}/{} device={} code={} elapsed_us={:.1f} msg={}", Sv(service),
                Sv(method), Quote(device_shown), code, elapsed_ns / 1e3, Quote(message));
  }
}

}  // namespace iommu::server
