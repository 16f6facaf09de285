// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_CORE_BASE_STATUS_MACROS_H_
#define IOMMU_CORE_BASE_STATUS_MACROS_H_

// Propagation helpers for absl::Status, as leveldb's `if (!s.ok()) return s;`.
// Debian's abseil 20220623 ships no ABSL_RETURN_IF_ERROR, so these are ours.

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define IOMMU_STATUS_CONCAT_INNER_(a, b) a##b
#define IOMMU_STATUS_CONCAT_(a, b) IOMMU_STATUS_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr): evaluates `expr` (an absl::Status) once and returns
// it from the enclosing function unless it is OK.
#define RETURN_IF_ERROR(expr)                                          \
  do {                                                                 \
    ::absl::Status iommu_status_ = (expr);                             \
    if (ABSL_PREDICT_FALSE(!iommu_status_.ok())) return iommu_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); on
// error returns its status, otherwise moves the value into `lhs`, which may be
// a declaration (`auto x`) or an existing lvalue.
#define ASSIGN_OR_RETURN(lhs, expr) \
  IOMMU_ASSIGN_OR_RETURN_IMPL_(IOMMU_STATUS_CONCAT_(iommu_statusor_, __LINE__), lhs, expr)

#define IOMMU_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                 \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) {               \
    return std::move(statusor).status();                  \
  }                                                       \
  lhs = *std::move(statusor)

#endif  // IOMMU_CORE_BASE_STATUS_MACROS_H_
