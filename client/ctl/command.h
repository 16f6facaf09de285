// SPDX-License-Identifier: Apache-2.0
// iommuctl subcommands: a name, a summary and the flags for `iommuctl help`,
// and a run function. A run function reads all its flags first, calls
// args.CheckAllUsed() before it changes anything on the daemon, then acts and
// prints through ctx.printer.
#ifndef IOMMU_CLIENT_CTL_COMMAND_H_
#define IOMMU_CLIENT_CTL_COMMAND_H_

#include <atomic>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/client.h"
#include "client/ctl/args.h"
#include "client/ctl/output.h"
#include "client/status_macros.h"

namespace iommu::client::ctl {

struct Context {
  Client client;  // acts as --device, carrying --session when given
  Printer* printer = nullptr;
  // Set by SIGINT/SIGTERM: long-running subcommands stop at the next step.
  const std::atomic<bool>* interrupted = nullptr;
  std::string name;  // the subcommand being run
};

// One flag of a subcommand, as `iommuctl help SUB`, the completion script and
// the man page describe it. A flag a run function reads must be declared
// here: Args aborts on an undeclared read, so help cannot drift from code.
struct Flag {
  std::string name;   // without the dashes: "dma_addr"
  std::string value;  // what it takes ("A", "N", "DEV,..."); empty for a boolean
  std::string help;   // what it does, and its default when it has one
  bool required = false;
};

struct Command {
  std::string name;
  std::string summary;  // one line for `iommuctl help`
  std::vector<Flag> flags;
  std::function<absl::Status(Context&, Args&)> run;
  // How the flags combine, when the required/optional list of `flags` does
  // not say it (alternatives, flags that go together); empty: derived.
  std::string usage = {};
};

// "--name=VALUE" or "--name".
std::string FlagSpelling(const Flag& flag);
// The synopsis: `usage`, or the flags in order, optional ones in brackets.
std::string Synopsis(const Command& command);

// The RPC subcommands (one per RPC).
std::vector<Command> DmaCommands();
std::vector<Command> AdminCommands();
// watch-faults, dump.
std::vector<Command> InspectCommands();
std::vector<Command> SimulateCommands();
std::vector<Command> BenchCommands();

// Shared flag vocabularies, each with the declarations of the flags it reads.
absl::StatusOr<v1::DmaDirection> DirectionFlag(Args& args);
Flag DirectionSpec();
absl::StatusOr<v1::DmaAttrs> AttrsFlags(Args& args);
std::vector<Flag> AttrsSpecs();
// --buffer=ID | --phys=ADDR, --offset, --length (default: the rest of the buffer
// when --buffer is given and the daemon says its size).
absl::StatusOr<v1::MemRef> MemRefFlags(const Context& ctx, Args& args);
std::vector<Flag> MemRefSpecs();
// a + b + ..., in order.
std::vector<Flag> Flags(std::initializer_list<std::vector<Flag>> groups);

// A subcommand that builds one request from its flags, calls one RPC and
// prints the response.
template <typename Req, typename Resp>
Command Rpc(std::string name, std::string summary, std::vector<Flag> flags,
            std::function<absl::StatusOr<Req>(Context&, Args&)> build,
            absl::StatusOr<Resp> (Client::*call)(Req) const, std::string usage = {}) {
  return {.name = std::move(name),
          .summary = std::move(summary),
          .flags = std::move(flags),
          .run = [build, call](Context& ctx, Args& args) -> absl::Status {
            ASSIGN_OR_RETURN(Req request, build(ctx, args));
            RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
            ASSIGN_OR_RETURN(Resp response, (ctx.client.*call)(std::move(request)));
            ctx.printer->Print(response);
            return absl::OkStatus();
          },
          .usage = std::move(usage)};
}

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_COMMAND_H_
