// SPDX-License-Identifier: Apache-2.0
// iommuctl's command line, the way kubectl and git users expect it:
//
//   iommuctl [FLAGS] SUBCOMMAND [FLAGS]
//
// Global flags and the subcommand's flags may stand anywhere, before or
// after the subcommand, as `--name=value`, `--name value` (a flag that takes
// a value) or `--name` (a boolean). `-h`/`--help` shows help (of the
// subcommand when one is named), `help SUB` too; `-o FORMAT` is
// `--output=FORMAT`; `--` ends the flags. A flag that both the subcommand
// and the global set declare (keepalive --session) is the subcommand's.
//
// This file also renders what users read about the flags: the help texts,
// the bash completion script and the sections of the man page, all from the
// declarations in command.h, so none of them can drift from the code.
//
// Thread-compatible.
#ifndef IOMMU_CLIENT_CTL_CLI_H_
#define IOMMU_CLIENT_CTL_CLI_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/ctl/command.h"

namespace iommu::client::ctl {

// The flags every subcommand takes (connection, identity, output).
const std::vector<Flag>& GlobalFlags();

// The subcommands iommuctl itself answers, without a daemon.
inline constexpr char kHelpCommand[] = "help";
inline constexpr char kVersionCommand[] = "version";
inline constexpr char kCompletionCommand[] = "completion";

struct CommandLine {
  std::vector<std::string> global;  // --name=value, for Args::Parse
  std::string subcommand;           // empty when none was given
  std::vector<std::string> flags;   // the subcommand's, --name=value
  std::vector<std::string> positional;
  bool help = false;     // -h or --help anywhere
  bool version = false;  // --version anywhere
};

// Splits argv (without argv[0]). INVALID_ARGUMENT naming the argument for a
// flag that neither the subcommand nor the global set declares, a value
// missing after a flag that takes one, or an unknown subcommand.
absl::StatusOr<CommandLine> SplitCommandLine(const std::vector<std::string>& argv,
                                             const std::vector<Command>& commands);

// `iommuctl --help`: usage, the global flags, the subcommands.
std::string GlobalHelp(const std::vector<Command>& commands);
// `iommuctl help SUB`: usage, summary, each flag with its help.
std::string CommandHelp(const Command& command);
// "iommuctl VERSION".
std::string VersionText();
// `iommuctl completion bash`: a completion function for bash.
std::string BashCompletion(const std::vector<Command>& commands);

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_CLI_H_
