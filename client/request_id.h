// SPDX-License-Identifier: Apache-2.0
// Request ids: the exactly-once protocol of mutating calls across a daemon
// restart (docs/design.md#request-ids). Every mutating unary call carries
// `iommu-request-id: <id>` metadata, and every Batch message its
// BatchRequest.request_id; every retry of the call (or resend of the message
// on a new stream) reuses the id, and the daemon answers a repeated id with
// the original reply (trailing metadata `iommu-request-replayed: 1`) instead
// of applying the call twice.
//
// An id is 32 lowercase hex digits of 128 bits read from the kernel's CSPRNG
// (getrandom(2)): unique without coordination between clients, and
// unguessable, so no client can have its call answered with another's reply.
//
// Thread-safe.
#ifndef IOMMU_CLIENT_REQUEST_ID_H_
#define IOMMU_CLIENT_REQUEST_ID_H_

#include <array>
#include <cstddef>

namespace iommu::client::internal {

// The metadata a mutating unary call carries its id in.
inline constexpr char kRequestIdMetadataKey[] = "iommu-request-id";
// Trailing metadata of a reply the daemon replayed for a repeated id ("1").
inline constexpr char kRequestReplayedMetadataKey[] = "iommu-request-replayed";

inline constexpr size_t kRequestIdChars = 32;
using RequestId = std::array<char, kRequestIdChars>;  // not NUL-terminated

// A fresh id. Aborts if the kernel has no CSPRNG to read (rather than send
// an id another client could guess).
RequestId NewRequestId();

}  // namespace iommu::client::internal

#endif  // IOMMU_CLIENT_REQUEST_ID_H_
