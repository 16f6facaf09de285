#include "client/version.h"

namespace iommu::client {

const char* Version() { return IOMMU_BROKER_VERSION; }

}  // namespace iommu::client
