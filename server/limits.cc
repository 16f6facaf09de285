// SPDX-License-Identifier: Apache-2.0
#include "server/limits.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/errors.h"

namespace iommu::server {

std::string BoundedMessage(absl::string_view message, size_t max_bytes) {
  if (message.size() <= max_bytes) return std::string(message);
  const std::string marker = absl::StrCat("...(", message.size(), " bytes)");
  const size_t keep = max_bytes > marker.size() ? max_bytes - marker.size() : 0;
  return absl::StrCat(core::Utf8Prefix(message, keep), marker);
}

uint64_t MostTranslatedPieces(uint64_t iova, uint64_t length_bytes) {
  if (length_bytes == 0 || length_bytes - 1 > ~iova) return 1;
  const uint64_t first_page = iova >> 12;
  const uint64_t last_page = (iova + (length_bytes - 1)) >> 12;
  return last_page - first_page + 1;
}

absl::Status CheckReplyFits(const Limits& limits, absl::string_view field, uint64_t value,
                            uint64_t reply_bytes) {
  if (reply_bytes <= limits.max_message_bytes) return absl::OkStatus();
  return core::FieldError(
      absl::StatusCode::kResourceExhausted, field, value,
      absl::StrFormat("the reply could take %d bytes, more than --max_message_bytes=%d; nothing "
                      "was done (ask for less in one call)",
                      reply_bytes, limits.max_message_bytes));
}

absl::Status ValidateLimits(const Limits& limits, size_t max_record_bytes) {
  struct Flag {
    const char* name;
    uint64_t value;
  };
  for (const Flag& f : {Flag{"max_batch_ops", limits.max_batch_ops},
                        Flag{"max_sg_segments", limits.max_sg_segments},
                        Flag{"max_translate_accesses", limits.max_translate_accesses},
                        Flag{"max_buffer_runs", limits.max_buffer_runs},
                        Flag{"max_string_bytes", limits.max_string_bytes},
                        Flag{"max_streams_per_connection", limits.max_streams_per_connection},
                        Flag{"max_streams_per_device", limits.max_streams_per_device},
                        Flag{"max_watchers_per_device", limits.max_watchers_per_device}}) {
    if (f.value == 0) {
      return absl::InvalidArgumentError(absl::StrCat(f.name, "=0: must be at least 1"));
    }
  }
  constexpr uint32_t kMinMessageBytes = 64u << 10;
  if (limits.max_message_bytes < kMinMessageBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_message_bytes=%d: must be at least %d (64 KiB)",
                        limits.max_message_bytes, kMinMessageBytes));
  }
  namespace rb = reply_bytes;
  // The largest reply each count allows, in bytes.
  const uint64_t names = 2 * uint64_t{limits.max_string_bytes};
  const uint64_t most_chunks = std::max(limits.max_buffer_runs, limits.max_sg_segments);
  struct Reply {
    const char* flag;
    uint64_t value;
    uint64_t bytes;
    const char* what;
  };
  for (const Reply& r : {
           Reply{"max_batch_ops", limits.max_batch_ops,
                 rb::kBatchResponseFixed + uint64_t{limits.max_batch_ops} * rb::kBatchResultPerOp,
                 "a Batch response"},
           Reply{"max_sg_segments", limits.max_sg_segments,
                 rb::kMapSgFixed + uint64_t{limits.max_sg_segments} * rb::kDmaSegment,
                 "a MapSg response"},
           Reply{"max_buffer_runs", limits.max_buffer_runs,
                 rb::kBufferFixed + names + uint64_t{limits.max_buffer_runs} * rb::kPhysRun,
                 "a buffer's runs"},
           // GetSgTable lists the chunks of a mapping: at most one per run
           // of its buffer, or per segment of a MapSg.
           Reply{limits.max_sg_segments > limits.max_buffer_runs ? "max_sg_segments"
                                                                 : "max_buffer_runs",
                 most_chunks, rb::kBufferFixed + names + most_chunks * rb::kPhysRun,
                 "a GetSgTable response"},
       }) {
    if (r.bytes > limits.max_message_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s=%d: %s could take %d bytes, more than --max_message_bytes=%d; lower it or raise "
          "--max_message_bytes",
          r.flag, r.value, r.what, r.bytes, limits.max_message_bytes));
    }
  }
  if (max_record_bytes == 0) return absl::OkStatus();
  namespace rec = record_bytes;
  for (const Reply& r : {
           // Any reply, recorded under its request id (a Batch message's run
           // of operations records their results).
           Reply{"max_message_bytes", limits.max_message_bytes,
                 rec::kRecordFixed + uint64_t{limits.max_message_bytes},
                 "a reply recorded under a request id"},
           // A mapping has a piece per run of its buffer, per segment of a
           // MapSg, per chunk of an import.
           Reply{limits.max_sg_segments > limits.max_buffer_runs ? "max_sg_segments"
                                                                 : "max_buffer_runs",
                 most_chunks, rec::kRecordFixed + most_chunks * rec::kPerPiece,
                 "a mapping's record"},
       }) {
    if (r.bytes > max_record_bytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s=%d: %s could take %d bytes, more than the state store's %d per "
                          "record; lower it (or run with --no_store)",
                          r.flag, r.value, r.what, r.bytes, max_record_bytes));
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu::server
