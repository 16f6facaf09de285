// SPDX-License-Identifier: Apache-2.0
#ifndef IOMMU_SERVER_SERVICES_H_
#define IOMMU_SERVER_SERVICES_H_

// The iommu.v1 services iommud serves, by full name: for health, logs and the
// request scanner's plans. No gRPC here (the fuzz build has this file).

#include <vector>

namespace iommu::server {

const std::vector<const char*>& ServiceNames();

}  // namespace iommu::server

#endif  // IOMMU_SERVER_SERVICES_H_
