#include "client/ctl/command.h"
namespace iommu::client::ctl {
std::vector<Command> BenchCommands() { return {}; }
}  // namespace iommu::client::ctl
