// iommuctl subcommands: a name, a synopsis for `iommuctl help`, and a run
// function. A run function reads all its flags first, calls
// args.CheckAllUsed() before it changes anything on the daemon, then acts and
// prints through ctx.printer.
#ifndef IOMMU_CLIENT_CTL_COMMAND_H_
#define IOMMU_CLIENT_CTL_COMMAND_H_

#include <atomic>
#include <functional>
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

struct Command {
  std::string name;
  std::string synopsis;  // flags and a one-line description
  std::function<absl::Status(Context&, Args&)> run;
};

// The RPC subcommands (one per RPC).
std::vector<Command> DmaCommands();
std::vector<Command> AdminCommands();
// watch-faults, dump.
std::vector<Command> InspectCommands();
std::vector<Command> SimulateCommands();
std::vector<Command> BenchCommands();

// Shared flag vocabularies.
absl::StatusOr<v1::DmaDirection> DirectionFlag(Args& args);
absl::StatusOr<v1::DmaAttrs> AttrsFlags(Args& args);
// --buffer=ID | --phys=ADDR, --offset, --length (default: the rest of the buffer
// when --buffer is given and the daemon says its size).
absl::StatusOr<v1::MemRef> MemRefFlags(const Context& ctx, Args& args);

// A subcommand that builds one request from its flags, calls one RPC and
// prints the response.
template <typename Req, typename Resp>
Command Rpc(std::string name, std::string synopsis,
            std::function<absl::StatusOr<Req>(Context&, Args&)> build,
            absl::StatusOr<Resp> (Client::*call)(Req) const) {
  return {std::move(name), std::move(synopsis),
          [build, call](Context& ctx, Args& args) -> absl::Status {
            ASSIGN_OR_RETURN(Req request, build(ctx, args));
            RETURN_IF_ERROR(args.CheckAllUsed(ctx.name));
            ASSIGN_OR_RETURN(Resp response, (ctx.client.*call)(std::move(request)));
            ctx.printer->Print(response);
            return absl::OkStatus();
          }};
}

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_COMMAND_H_
