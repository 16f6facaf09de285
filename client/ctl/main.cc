// iommuctl: the command-line client of iommud.
//
//   iommuctl [--target=ADDR] [--device=NAME]
//            [(--token=T | --token_file=F) --tls_ca=F [--tls_server_name=N] |
//             --tls_cert=F --tls_key=F --tls_ca=F [--tls_server_name=N]]
//            [--session=ID] [--deadline_ms=N] [--max_message_bytes=N] [--max_batch_ops=N]
//            [--json] SUBCOMMAND [FLAGS]
//
// main() only parses the global flags into Options and dispatches. The exit
// status is 0 on success, else the absl/gRPC status code of the failure
// (3 INVALID_ARGUMENT, 5 NOT_FOUND, 7 PERMISSION_DENIED, 16 UNAUTHENTICATED...).
#include <csignal>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/ctl/command.h"
#include "client/status.h"
#include "client/version.h"

namespace iommu::client::ctl {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

struct GlobalOptions {
  Options connect;
  uint64_t session_id = 0;
  bool json = false;
};

constexpr char kGlobalUsage[] =
    "usage: iommuctl [GLOBAL FLAGS] SUBCOMMAND [FLAGS]\n"
    "global flags:\n"
    "  --target=ADDR         unix:/path or host:port (default unix:/tmp/iommud.sock)\n"
    "  --device=NAME         the device to act as (empty: the credential's identity, admin with "
    "--auth=none)\n"
    "  --token=T             bearer token (--auth=token), sent over TLS: needs --tls_ca\n"
    "  --token_file=F        file holding the bearer token\n"
    "  --tls_ca=F            CA that signed the daemon's certificate (--auth=token, --auth=mtls)\n"
    "  --tls_cert=F --tls_key=F   the client certificate and key (--auth=mtls)\n"
    "  --tls_server_name=N   name checked against the daemon's certificate (default: the\n"
    "                        target's host, localhost for unix:)\n"
    "  --session=ID          calls belong to this session (iommu-session-id)\n"
    "  --deadline_ms=N       deadline of each call (default 10000)\n"
    "  --max_message_bytes=N --max_batch_ops=N   the daemon's limits, when not its defaults\n"
    "                        (4M and 8192): replies received up to N bytes, larger\n"
    "                        requests and Batch messages refused before sending\n"
    "  --json                print JSON (one object per line) instead of tables\n"
    "  --version             print iommuctl's version (also: iommuctl version) and exit\n"
    "numbers are decimal or 0x-hex, decimal ones with an optional K/M/G suffix.\n"
    "subcommands:\n";

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
  ASSIGN_OR_RETURN(g.json, args.Bool("json"));
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

void PrintUsage(std::ostream& out, const std::vector<Command>& commands) {
  out << kGlobalUsage;
  for (const Command& c : commands) out << "  " << c.name << " " << c.synopsis << "\n";
}

int Fail(const absl::Status& status) {
  std::cerr << "iommuctl: " << status.ToString() << "\n";
  return static_cast<int>(status.code());
}

int Run(int argc, char** argv) {
  const std::vector<Command> commands = AllCommands();
  // Global flags come before the subcommand, its own flags after it.
  std::vector<std::string> global_argv, sub_argv;
  std::string subcommand;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (subcommand.empty() && (arg.rfind("--", 0) != 0)) {
      subcommand = arg;
    } else {
      (subcommand.empty() ? global_argv : sub_argv).push_back(std::move(arg));
    }
  }
  for (const std::string& a : global_argv) {
    if (a == "--help" || a == "-h") subcommand = "help";
    if (a == "--version") subcommand = "version";
  }
  if (subcommand == "version") {
    std::cout << "iommuctl " << Version() << "\n";
    return 0;
  }
  if (subcommand.empty() || subcommand == "help") {
    PrintUsage(subcommand.empty() ? std::cerr : std::cout, commands);
    return subcommand.empty() ? static_cast<int>(absl::StatusCode::kInvalidArgument) : 0;
  }
  const Command* command = nullptr;
  for (const Command& c : commands) {
    if (c.name == subcommand) command = &c;
  }
  if (command == nullptr) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("subcommand=\"", subcommand, "\": unknown (iommuctl help lists them)")));
  }
  absl::StatusOr<Args> global = Args::Parse(global_argv);
  if (!global.ok()) return Fail(global.status());
  absl::StatusOr<GlobalOptions> options = ParseGlobal(*global);
  if (!options.ok()) return Fail(options.status());
  absl::StatusOr<Args> args = Args::Parse(sub_argv);
  if (!args.ok()) return Fail(args.status());
  if (args->Has("help")) {
    std::cout << "iommuctl " << command->name << " " << command->synopsis << "\n";
    return 0;
  }
  absl::StatusOr<Client> client = Client::Connect(options->connect);
  if (!client.ok()) return Fail(client.status());

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  Printer printer(std::cout, options->json);
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
