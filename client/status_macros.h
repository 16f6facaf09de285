// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CLIENT_STATUS_MACROS_H_
#define IOMMU_CLIENT_STATUS_MACROS_H_

// RETURN_IF_ERROR / ASSIGN_OR_RETURN for the client side, which does not
// depend on core (Debian's abseil 20220623 has neither). Same semantics and
// names as core/base/status_macros.h; defined only if that header is not in use.

#include <utility>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#ifndef RETURN_IF_ERROR
#define IOMMU_CLIENT_CONCAT_INNER_(a, b) a##b
#define IOMMU_CLIENT_CONCAT_(a, b) IOMMU_CLIENT_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                                          \
  do {                                                                 \
    ::absl::Status iommu_status_ = (expr);                             \
    if (ABSL_PREDICT_FALSE(!iommu_status_.ok())) return iommu_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  IOMMU_CLIENT_ASSIGN_OR_RETURN_IMPL_(IOMMU_CLIENT_CONCAT_(iommu_statusor_, __LINE__), lhs, expr)

#define IOMMU_CLIENT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                        \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) {                      \
    return std::move(statusor).status();                         \
  }                                                              \
  lhs = *std::move(statusor)
#endif  // RETURN_IF_ERROR

#endif  // IOMMU_CLIENT_STATUS_MACROS_H_
