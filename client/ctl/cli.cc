// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/cli.h"

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/status.h"
#include "client/version.h"

namespace iommu::client::ctl {
namespace {

constexpr size_t kHelpWidth = 100;
constexpr size_t kFlagColumn = 30;

const std::vector<Flag>& Globals() {
  static const std::vector<Flag>* flags = new std::vector<Flag>{
      {.name = "target",
       .value = "ADDR",
       .help = "the daemon: unix:/path or host:port (default unix:/tmp/iommud.sock)"},
      {.name = "device",
       .value = "NAME",
       .help = "the device to act as (default: the credential's identity; admin with "
               "--auth=none)"},
      {.name = "token",
       .value = "T",
       .help = "bearer token (--auth=token), sent only over TLS: needs --tls_ca"},
      {.name = "token_file", .value = "FILE", .help = "a file holding the bearer token"},
      {.name = "tls_ca",
       .value = "FILE",
       .help = "the CA that signed the daemon's certificate (--auth=token and --auth=mtls)"},
      {.name = "tls_cert", .value = "FILE", .help = "the client certificate (--auth=mtls)"},
      {.name = "tls_key", .value = "FILE", .help = "the client certificate's key (--auth=mtls)"},
      {.name = "tls_server_name",
       .value = "NAME",
       .help = "the name checked against the daemon's certificate (default: the target's "
               "host, localhost for unix:)"},
      {.name = "session", .value = "ID", .help = "calls belong to this session (open-session)"},
      {.name = "deadline_ms", .value = "N", .help = "the deadline of each call (default 10000)"},
      {.name = "max_message_bytes",
       .value = "N",
       .help = "the daemon's --max_message_bytes when not its default (4M): replies are "
               "received up to N bytes, larger requests refused before sending"},
      {.name = "max_batch_ops",
       .value = "N",
       .help = "the daemon's --max_batch_ops when not its default (8192)"},
      {.name = "output",
       .value = "table|wide|json",
       .help = "tables of the main columns (table, the default), every column (wide), or "
               "one JSON object per line (json: protobuf's JSON mapping, addresses as decimal "
               "strings)"},
      {.name = "json", .help = "the same as -o json"},
      {.name = "help", .help = "this help, or the subcommand's when one is named"},
      {.name = "version", .help = "print the version and exit"},
  };
  return *flags;
}

const Flag* FindFlag(const std::vector<Flag>& flags, absl::string_view name) {
  for (const Flag& f : flags) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// "--dma-addr" and "--dma_addr" are one flag.
std::string Canonical(absl::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

std::vector<std::string> Choices(const Flag& flag) {
  if (!absl::StrContains(flag.value, '|')) return {};
  return absl::StrSplit(flag.value, '|');
}

// `text` wrapped at kHelpWidth, every line after the first indented by
// `indent`, the first starting at column `start`.
std::string Wrap(absl::string_view text, size_t indent, size_t start) {
  std::string out;
  size_t column = start;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (column > indent && column + 1 + word.size() > kHelpWidth) {
      absl::StrAppend(&out, "\n", std::string(indent, ' '));
      column = indent;
    } else if (column > start || (column == start && !out.empty())) {
      out += ' ';
      ++column;
    }
    absl::StrAppend(&out, word);
    column += word.size();
  }
  return out;
}

std::string FlagLines(const std::vector<Flag>& flags) {
  std::string out;
  for (const Flag& f : flags) {
    std::string left = absl::StrCat("  ", FlagSpelling(f));
    if (f.name == "output") left = absl::StrCat("  -o, ", FlagSpelling(f));
    if (f.name == "help") left = "  -h, --help";
    if (left.size() + 2 > kFlagColumn) {
      absl::StrAppend(&out, left, "\n", std::string(kFlagColumn, ' '));
    } else {
      absl::StrAppend(&out, left, std::string(kFlagColumn - left.size(), ' '));
    }
    absl::StrAppend(&out, Wrap(f.help, kFlagColumn, kFlagColumn), "\n");
  }
  return out;
}

std::string CommandNames(const std::vector<Command>& commands) {
  std::vector<std::string> names;
  for (const Command& c : commands) names.push_back(c.name);
  return absl::StrJoin(names, " ");
}

std::string FlagWords(const std::vector<Flag>& flags) {
  std::vector<std::string> words;
  for (const Flag& f : flags)
    words.push_back(absl::StrCat("--", f.name, f.value.empty() ? "" : "="));
  return absl::StrJoin(words, " ");
}

std::string ValuedNames(const std::vector<Flag>& flags) {
  std::string out = " ";
  for (const Flag& f : flags) {
    if (!f.value.empty()) absl::StrAppend(&out, "--", f.name, " ");
  }
  return out;
}

// The `case` arms that list the choices of every enumerated flag.
std::string ChoiceArms(const std::vector<Flag>& flags, std::set<std::string>* done) {
  std::string out;
  for (const Flag& f : flags) {
    std::vector<std::string> choices = Choices(f);
    if (choices.empty() || !done->insert(f.name).second) continue;
    absl::StrAppend(&out, "      --", f.name, ") words=\"", absl::StrJoin(choices, " "), "\" ;;\n");
  }
  return out;
}

}  // namespace

std::string FlagSpelling(const Flag& flag) {
  return flag.value.empty() ? absl::StrCat("--", flag.name)
                            : absl::StrCat("--", flag.name, "=", flag.value);
}

std::string Synopsis(const Command& command) {
  if (!command.usage.empty()) return command.usage;
  std::vector<std::string> parts;
  for (const Flag& f : command.flags) {
    parts.push_back(f.required ? FlagSpelling(f) : absl::StrCat("[", FlagSpelling(f), "]"));
  }
  return absl::StrJoin(parts, " ");
}

const std::vector<Flag>& GlobalFlags() { return Globals(); }

absl::StatusOr<CommandLine> SplitCommandLine(const std::vector<std::string>& argv,
                                             const std::vector<Command>& commands) {
  CommandLine line;
  // The subcommand: the first word that is neither a flag nor the value of
  // a global flag given as `--name value`.
  size_t sub_index = argv.size();
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--") break;
    if (a == "-o") {
      ++i;
      continue;
    }
    if (absl::StartsWith(a, "-")) {
      if (absl::StartsWith(a, "--") && !absl::StrContains(a, '=')) {
        const Flag* f = FindFlag(Globals(), Canonical(a.substr(2)));
        if (f != nullptr && !f->value.empty()) ++i;
      }
      continue;
    }
    sub_index = i;
    line.subcommand = a;
    break;
  }
  const Command* command = nullptr;
  for (const Command& c : commands) {
    if (c.name == line.subcommand) command = &c;
  }
  const bool builtin = line.subcommand == kHelpCommand || line.subcommand == kVersionCommand ||
                       line.subcommand == kCompletionCommand;
  if (!line.subcommand.empty() && command == nullptr && !builtin) {
    return InvalidField("subcommand", line.subcommand, "unknown (iommuctl help lists them)");
  }
  const std::vector<Flag> none;
  const std::vector<Flag>& own = command != nullptr ? command->flags : none;

  bool only_positional = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (i == sub_index) continue;
    const std::string& a = argv[i];
    if (only_positional || !absl::StartsWith(a, "-") || a == "-") {
      line.positional.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positional = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      line.help = true;
      continue;
    }
    if (a == "--version") {
      line.version = true;
      continue;
    }
    std::string name, value;
    bool has_value = false;
    if (absl::StartsWith(a, "-o")) {  // -o FORMAT, -oFORMAT, -o=FORMAT
      name = "output";
      value = a.substr(2);
      if (absl::StartsWith(value, "=")) value = value.substr(1);
      has_value = !value.empty();
    } else if (absl::StartsWith(a, "--")) {
      const size_t eq = a.find('=');
      name = Canonical(a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2));
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
        has_value = true;
      }
    } else {
      return InvalidField("flag", a, "unknown short flag (only -h and -o exist)");
    }
    if (name.empty()) return InvalidField("flag", a, "has no name");
    const Flag* flag = FindFlag(own, name);
    bool global = false;
    if (flag == nullptr) {
      flag = FindFlag(Globals(), name);
      global = flag != nullptr;
    }
    if (flag == nullptr) {
      return InvalidField("flag", absl::StrCat("--", name),
                          command != nullptr ? absl::StrCat("is not a flag of '", command->name,
                                                            "' (iommuctl help ", command->name, ")")
                                             : "is not a global flag (iommuctl help)");
    }
    if (!has_value) {
      if (flag->value.empty()) {
        value = "true";
      } else if (i + 1 < argv.size() && i + 1 != sub_index) {
        value = argv[++i];
      } else {
        return InvalidField("flag", FlagSpelling(*flag), "needs a value");
      }
    }
    if (name == "json") {  // --json is -o json
      if (value != "true") return InvalidField("--json", value, "takes no value (use -o)");
      name = "output";
      value = "json";
      global = true;
    }
    (global ? line.global : line.flags).push_back(absl::StrCat("--", name, "=", value));
  }
  return line;
}

std::string GlobalHelp(const std::vector<Command>& commands) {
  std::string out =
      "Usage: iommuctl [FLAGS] SUBCOMMAND [FLAGS]\n"
      "\n"
      "The command-line client of iommud, the IOMMU broker: one subcommand per RPC, and\n"
      "watch-faults, dump, health, simulate and bench.\n"
      "\n"
      "Flags:\n";
  absl::StrAppend(&out, FlagLines(Globals()));
  absl::StrAppend(&out, "\nSubcommands:\n");
  size_t width = 0;
  for (const Command& c : commands) width = std::max(width, c.name.size());
  for (const Command& c : commands) {
    const std::string left =
        absl::StrCat("  ", c.name, std::string(width - c.name.size() + 2, ' '));
    absl::StrAppend(&out, left, Wrap(c.summary, left.size(), left.size()), "\n");
  }
  absl::StrAppend(
      &out,
      "\n"
      "Flags go anywhere on the line, as --name=VALUE or --name VALUE; iommuctl help SUBCOMMAND\n"
      "describes a subcommand's. Numbers are decimal or 0x-hex, decimal ones with an optional\n"
      "K/M/G suffix (4K = 4096). Tables print addresses in hex and sizes in bytes.\n"
      "iommuctl completion bash prints a bash completion script.\n"
      "\n"
      "Exit status: 0 on success, else the gRPC status code of the failure (3 INVALID_ARGUMENT,\n"
      "5 NOT_FOUND, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 16\n"
      "UNAUTHENTICATED, ...).\n");
  return out;
}

std::string CommandHelp(const Command& command) {
  const std::string lead = absl::StrCat("Usage: iommuctl ", command.name, " ");
  std::string out = absl::StrCat(lead, Wrap(Synopsis(command), lead.size(), lead.size()), "\n\n",
                                 Wrap(command.summary, 0, 0), "\n");
  std::vector<Flag> flags = command.flags;
  if (!flags.empty()) absl::StrAppend(&out, "\nFlags:\n", FlagLines(flags));
  absl::StrAppend(&out,
                  "\nGlobal flags (iommuctl --help): --target, --device, --session, -o ...\n");
  return out;
}

std::string VersionText() { return absl::StrCat("iommuctl ", Version(), "\n"); }

std::string BashCompletion(const std::vector<Command>& commands) {
  std::set<std::string> done;
  std::string choices = ChoiceArms(Globals(), &done);
  std::string flag_arms;
  for (const Command& c : commands) {
    absl::StrAppend(&choices, ChoiceArms(c.flags, &done));
    std::vector<Flag> own;  // a flag global too is listed once
    for (const Flag& f : c.flags) {
      if (FindFlag(Globals(), f.name) == nullptr) own.push_back(f);
    }
    absl::StrAppend(&flag_arms, "      ", c.name, ") words=\"$words ", FlagWords(own), "\" ;;\n");
  }
  // The global flags that take a value, so that `--target ADDR` is not
  // taken for the subcommand.
  return absl::StrCat(
      "# bash completion for iommuctl (generated by `iommuctl completion bash`)\n"
      "_iommuctl() {\n"
      "  local line=${COMP_LINE:0:COMP_POINT}\n"
      "  local -a w\n"
      "  read -ra w <<< \"$line\"\n"
      "  local cur=\"\"\n"
      "  [[ $line == *[[:space:]] ]] || { cur=${w[-1]}; unset 'w[-1]'; }\n"
      "  local valued=\"",
      ValuedNames(Globals()),
      "\" sub=\"\" prev=\"\" i\n"
      "  for ((i = 1; i < ${#w[@]}; i++)); do\n"
      "    case ${w[i]} in\n"
      "      --) break ;;\n"
      "      -o) ((i++)) ;;\n"
      "      -*) [[ ${w[i]} != *=* && $valued == *\" ${w[i]} \"* ]] && ((i++)) ;;\n"
      "      *) [[ -z $sub ]] && sub=${w[i]} ;;\n"
      "    esac\n"
      "  done\n"
      "  ((${#w[@]} > 1)) && prev=${w[-1]}\n"
      "  local words=\"\" flag=\"\" prefix=\"\"\n"
      "  if [[ $prev == -o ]]; then\n"
      "    flag=--output\n"
      "  elif [[ $cur == --*=* ]]; then\n"
      "    flag=${cur%%=*} prefix=\"$flag=\" cur=${cur#*=}\n"
      "  elif [[ $valued == *\" $prev \"* ]]; then\n"
      "    flag=$prev\n"
      "  fi\n"
      "  if [[ -n $flag ]]; then\n"
      "    case ${flag//-/_} in\n",
      absl::StrReplaceAll(choices, {{"      --", "      __"}}),
      "      *) COMPREPLY=(); return 0 ;;\n"
      "    esac\n"
      "  fi\n"
      "  if [[ -z $words ]]; then\n"
      "    if [[ -z $sub && $cur != -* ]]; then\n"
      "      words=\"",
      CommandNames(commands), " help version completion",
      "\"\n"
      "    elif [[ $sub == help && $cur != -* ]]; then\n"
      "      words=\"",
      CommandNames(commands),
      "\"\n"
      "    elif [[ $sub == completion && $cur != -* ]]; then\n"
      "      words=bash\n"
      "    else\n"
      "      words=\"",
      FlagWords(Globals()), " -h -o",
      "\"\n"
      "      case $sub in\n",
      flag_arms,
      "      esac\n"
      "    fi\n"
      "  fi\n"
      "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      "  # bash splits words at '=' (COMP_WORDBREAKS): complete the part after it.\n"
      "  if [[ -n $prefix && $COMP_WORDBREAKS != *=* ]]; then\n"
      "    COMPREPLY=(\"${COMPREPLY[@]/#/$prefix}\")\n"
      "  fi\n"
      "  if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]]; then\n"
      "    compopt -o nospace 2>/dev/null\n"
      "  fi\n"
      "  return 0\n"
      "}\n"
      "complete -F _iommuctl iommuctl\n");
}

}  // namespace iommu::client::ctl
