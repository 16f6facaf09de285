#include "client/ctl/command.h"
namespace iommu::client::ctl {
std::vector<Command> SimulateCommands() { return {}; }
}  // namespace iommu::client::ctl
