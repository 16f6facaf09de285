// SPDX-License-Identifier: Apache-2.0
// iommuctl: the command-line client of iommud.
//
//   iommuctl [FLAGS] SUBCOMMAND [FLAGS]
//
// (the grammar: cli.h; `iommuctl --help` lists the flags). main() splits the
// command line, answers help, version and completion itself, parses the
// global flags into Options and dispatches. The exit status is 0 on success,
// else the absl/gRPC status code of the failure (3 INVALID_ARGUMENT,
// 5 NOT_FOUND, 7 PERMISSION_DENIED, 16 UNAUTHENTICATED...).
#include <csignal>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "client/ctl/cli.h"
#include "client/ctl/command.h"
#include "client/status.h"

namespace iommu::client::ctl {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

struct GlobalOptions {
  Options connect;
  uint64_t session_id = 0;
  Format format = Format::kTable;
};

absl::StatusOr<GlobalOptions> ParseGlobal(Args& args) {
  GlobalOptions g;
  Options& o = g.connect;
  o.target = args.StringOr("target", o.target);
  o.device = args.StringOr("device", "");
  Credentials& c = o.credentials;
  if (args.Has("token") && args.Has("token_file")) {
    return absl::InvalidArgumentError("--token_file: give --token or --token_file, not both");
  }
  // A token selects token auth (over TLS); otherwise any TLS file selects
  // mTLS. ValidateOptions then names what is missing or misplaced.
  if (args.Has("token")) {
    c.kind = Credentials::Kind::kToken;
    ASSIGN_OR_RETURN(c.token, args.String("token"));
  } else if (args.Has("token_file")) {
    c.kind = Credentials::Kind::kToken;
    ASSIGN_OR_RETURN(std::string file, args.String("token_file"));
    ASSIGN_OR_RETURN(c.token, ReadTokenFile(file));
  } else if (args.Has("tls_cert") || args.Has("tls_key") || args.Has("tls_ca")) {
    c.kind = Credentials::Kind::kMtls;
  }
  c.tls_cert_file = args.StringOr("tls_cert", "");
  c.tls_key_file = args.StringOr("tls_key", "");
  c.tls_ca_file = args.StringOr("tls_ca", "");
  c.tls_server_name = args.StringOr("tls_server_name", "");
  if (c.kind == Credentials::Kind::kToken && c.tls_ca_file.empty()) {
    return InvalidField(
        "--tls_ca", "",
        "a token is sent only over TLS: give the CA that signed the daemon's certificate");
  }
  ASSIGN_OR_RETURN(uint64_t deadline_ms, args.U64Or("deadline_ms", 10000));
  o.default_deadline = absl::Milliseconds(deadline_ms);
  ASSIGN_OR_RETURN(uint64_t max_message_bytes,
                   args.U64Or("max_message_bytes", o.limits.max_message_bytes));
  ASSIGN_OR_RETURN(uint64_t max_batch_ops, args.U64Or("max_batch_ops", o.limits.max_batch_ops));
  if (max_message_bytes > UINT32_MAX) {
    return InvalidField("--max_message_bytes", max_message_bytes, "must be at most 1G");
  }
  if (max_batch_ops > UINT32_MAX) {
    return InvalidField("--max_batch_ops", max_batch_ops, "must be at most 2^32 - 1");
  }
  o.limits = {.max_message_bytes = static_cast<uint32_t>(max_message_bytes),
              .max_batch_ops = static_cast<uint32_t>(max_batch_ops)};
  ASSIGN_OR_RETURN(g.session_id, args.U64Or("session", 0));
  ASSIGN_OR_RETURN(
      g.format,
      args.Enum<Format>(
          "output", {{"table", Format::kTable}, {"wide", Format::kWide}, {"json", Format::kJson}},
          Format::kTable));
  RETURN_IF_ERROR(args.CheckAllUsed("iommuctl"));
  RETURN_IF_ERROR(ValidateOptions(o));
  return g;
}

std::vector<Command> AllCommands() {
  std::vector<Command> all;
  for (auto group :
       {DmaCommands, AdminCommands, InspectCommands, SimulateCommands, BenchCommands}) {
    for (Command& c : group()) all.push_back(std::move(c));
  }
  return all;
}

int Fail(const absl::Status& status) {
  std::cerr << "iommuctl: " << status.ToString() << "\n";
  return static_cast<int>(status.code());
}

// help [SUB], version and completion: answered without a daemon.
int RunBuiltin(const CommandLine& line, const std::vector<Command>& commands) {
  if (line.subcommand == kVersionCommand || (line.version && line.subcommand.empty())) {
    std::cout << VersionText();
    return 0;
  }
  if (line.subcommand == kCompletionCommand) {
    if (line.positional.size() != 1 || line.positional[0] != "bash") {
      return Fail(InvalidField("shell", absl::StrJoin(line.positional, " "),
                               "iommuctl completion bash: only bash is supported"));
    }
    std::cout << BashCompletion(commands);
    return 0;
  }
  // help, help SUB, --help, SUB --help.
  std::string topic = line.subcommand == kHelpCommand
                          ? (line.positional.empty() ? "" : line.positional[0])
                          : line.subcommand;
  if (topic.empty()) {
    std::cout << GlobalHelp(commands);
    return 0;
  }
  for (const Command& c : commands) {
    if (c.name == topic) {
      std::cout << CommandHelp(c);
      return 0;
    }
  }
  return Fail(InvalidField("subcommand", topic, "unknown (iommuctl help lists them)"));
}

int Run(int argc, char** argv) {
  const std::vector<Command> commands = AllCommands();
  absl::StatusOr<CommandLine> line =
      SplitCommandLine(std::vector<std::string>(argv + 1, argv + argc), commands);
  if (!line.ok()) return Fail(line.status());
  if (line->help || line->version || line->subcommand == kHelpCommand ||
      line->subcommand == kVersionCommand || line->subcommand == kCompletionCommand) {
    return RunBuiltin(*line, commands);
  }
  if (line->subcommand.empty()) {
    std::cerr << GlobalHelp(commands);
    return static_cast<int>(absl::StatusCode::kInvalidArgument);
  }
  const Command* command = nullptr;
  for (const Command& c : commands) {
    if (c.name == line->subcommand) command = &c;
  }
  if (!line->positional.empty()) {
    return Fail(InvalidField("argument", line->positional[0],
                             absl::StrCat("'", command->name, "' takes flags only (iommuctl help ",
                                          command->name, ")")));
  }
  absl::StatusOr<Args> global = Args::Parse(line->global);
  if (!global.ok()) return Fail(global.status());
  absl::StatusOr<GlobalOptions> options = ParseGlobal(*global);
  if (!options.ok()) return Fail(options.status());
  absl::StatusOr<Args> args = Args::Parse(line->flags);
  if (!args.ok()) return Fail(args.status());
  std::set<std::string, std::less<>> declared;
  for (const Flag& f : command->flags) declared.insert(f.name);
  args->Declare(std::move(declared));
  absl::StatusOr<Client> client = Client::Connect(options->connect);
  if (!client.ok()) return Fail(client.status());

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  Printer printer(std::cout, options->format);
  Context ctx{.client = client->WithSession(options->session_id),
              .printer = &printer,
              .interrupted = &g_interrupted,
              .name = command->name};
  absl::Status status = command->run(ctx, *args);
  return status.ok() ? 0 : Fail(status);
}

}  // namespace
}  // namespace iommu::client::ctl

int main(int argc, char** argv) {
  // Debian's abseil is built without NDEBUG: without this every Mutex
  // acquisition (the Batch stream takes several per message) also updates a
  // process-wide lock graph under a global spinlock. The tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return iommu::client::ctl::Run(argc, argv);
}
