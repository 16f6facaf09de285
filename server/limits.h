// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_LIMITS_H_
#define IOMMU_SERVER_LIMITS_H_

// What one request, one stream and one device may cost the daemon
// (docs/design.md#limits). Every limit is a flag of iommud; each is checked
// before any work, and a request beyond one is refused with a message naming
// the flag and its value: RESOURCE_EXHAUSTED for a size or count, and
// INVALID_ARGUMENT for what is malformed.
//
// A request is accepted only if its reply is guaranteed to fit in
// max_message_bytes. Replies are bounded by construction: each limit below
// caps a count whose reply bytes per entry are bounded by the constants
// here, and ValidateLimits refuses a set of limits whose largest reply would
// not fit. The few replies that depend on the request's values (a Translate
// lists one piece per page it touches) are checked per request.
//
// Plain values; thread-compatible.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu::server {

struct Limits {
  // --max_message_bytes: every gRPC message, each way (gRPC's own default,
  // so that any gRPC client receives every reply).
  uint32_t max_message_bytes = 4u << 20;
  // --max_batch_ops: operations per Batch message; a MapSg operation counts
  // one more for each of its segments.
  uint32_t max_batch_ops = 8192;
  // --max_sg_segments: segments per MapSg (unary or in a Batch).
  uint32_t max_sg_segments = 65536;
  // --max_translate_accesses: accesses per TranslateBatch.
  uint32_t max_translate_accesses = 16384;
  // --max_buffer_runs: physical runs a buffer made by AllocBuffer or Alloc
  // may have (the core checks it, core::BrokerOptions::max_buffer_runs).
  uint32_t max_buffer_runs = 131072;
  // --max_string_bytes: every string field of a request (device names,
  // pools, SMMUs, tokens, request ids).
  uint32_t max_string_bytes = 256;
  // --max_streams_per_connection: HTTP/2 streams (calls) at once on one
  // connection, advertised to the client (gRPC's max concurrent streams).
  uint32_t max_streams_per_connection = 100;
  // --max_streams_per_device: Batch and WatchFaults streams at once acting as
  // one device (or as the admin), counted by the daemon.
  uint32_t max_streams_per_device = 16;
  // --max_watchers_per_device: of those, WatchFaults streams (each also
  // holds a stream slot), so that watchers never take all of a device's
  // stream slots from its Batch streams.
  uint32_t max_watchers_per_device = 8;
};

// Upper bounds of the serialized size of reply pieces, including the tag
// and length that frame each inside its parent. Each is the sum of its
// fields at their largest (a uint64 varint is at most 10 bytes, plus a tag);
// limits_test checks each against a message with every field at its largest.
namespace reply_bytes {
// A BatchResult carrying an error: code, and a message of at most
// kMaxResultMessageBytes.
inline constexpr size_t kMaxResultMessageBytes = 256;
inline constexpr size_t kBatchErrorResult = 8 + kMaxResultMessageBytes;
// Any BatchResult per unit of an operation's weight (one, plus one per
// MapSg segment): an error, or a Map, Translate or MapSg result.
inline constexpr size_t kBatchResultPerOp = kBatchErrorResult > 64 ? kBatchErrorResult : 64;
inline constexpr size_t kBatchResponseFixed = 11;  // sequence
// MapSgResponse: its fixed fields, and one DmaSegment.
inline constexpr size_t kMapSgFixed = 50;
inline constexpr size_t kDmaSegment = 24;
// A Buffer's runs (PhysRun), and everything else of an AllocBufferResponse,
// GetBufferResponse, AllocResponse or GetSgTableResponse but its names.
inline constexpr size_t kPhysRun = 24;
inline constexpr size_t kBufferFixed = 96;
// TranslateResponse: its fixed fields framed in a TranslateBatchResponse, and
// one TranslatedPage.
inline constexpr size_t kTranslateFixed = 32;
inline constexpr size_t kTranslatedPage = 40;
// WalkDomainResponse: its fixed fields, and one PageTableLeaf.
inline constexpr size_t kWalkFixed = 22;
inline constexpr size_t kPageTableLeaf = 52;
}  // namespace reply_bytes

// The most bytes of a status message a unary call's trailer carries (a
// client's default metadata limit is 8 KiB); longer ones are cut, marked
// with their length.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// `message` cut to at most `max_bytes` at a UTF-8 character boundary, ending
// with "...(N bytes)" when it was cut.
std::string BoundedMessage(absl::string_view message, size_t max_bytes);

// Upper bounds of the durable records an accepted request writes
// (store/state_codec.h): a record's ids, names and flags, and per piece of a
// mapping its page-table range, piece, DMA segment and buffer id (packed
// varints of at most 10 bytes each), which also covers a buffer's or an
// export's runs. A reply recorded under a request id takes its own bytes
// plus kRecordFixed.
namespace record_bytes {
inline constexpr size_t kRecordFixed = 1024;
inline constexpr size_t kPerPiece = 96;
}  // namespace record_bytes

// INVALID_ARGUMENT naming the flag when a limit is zero, when the largest
// reply it allows could not fit in max_message_bytes, or, with a state store
// (`max_record_bytes` its largest value; 0: none), when the largest record
// a request within the limits writes could not fit in one value: the store
// would then refuse a commit after the work and stop the daemon.
absl::Status ValidateLimits(const Limits& limits, size_t max_record_bytes = 0);

// The most pieces (TranslatedPage) a Translate of [iova, iova + length_bytes)
// can answer with: one per 4 KiB page it touches, the smallest leaf any
// granule has (1 for an access the core refuses: empty, or passing 2^64).
uint64_t MostTranslatedPieces(uint64_t iova, uint64_t length_bytes);
// The most bytes the answer to one access can take, framed as an entry of a
// TranslateBatchResponse (a unary TranslateResponse is never larger).
inline uint64_t MostTranslateReplyBytes(uint64_t iova, uint64_t length_bytes) {
  return reply_bytes::kTranslateFixed +
         MostTranslatedPieces(iova, length_bytes) * reply_bytes::kTranslatedPage;
}

// RESOURCE_EXHAUSTED naming --max_message_bytes when a reply of
// `reply_bytes` could not fit; `what` says what was asked ("accesses").
absl::Status CheckReplyFits(const Limits& limits, absl::string_view field, uint64_t value,
                            uint64_t reply_bytes);

}  // namespace iommu::server

#endif  // IOMMU_SERVER_LIMITS_H_
