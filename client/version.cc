// SPDX-License-Identifier: Apache-2.0
#include "client/version.h"

namespace iommu::client {

const char* Version() { return IOMMU_BROKER_VERSION; }

}  // namespace iommu::client
