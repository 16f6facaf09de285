// SPDX-License-Identifier: Apache-2.0
#include "server/services.h"

namespace iommu::server {

const std::vector<const char*>& ServiceNames() {
  static const std::vector<const char*> names = {"iommu.v1.Dma",      "iommu.v1.Memory",
                                                 "iommu.v1.Domains",  "iommu.v1.Devices",
                                                 "iommu.v1.Sessions", "iommu.v1.Stats"};
  return names;
}

}  // namespace iommu::server
