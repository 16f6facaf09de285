// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/cli.h"

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/version.h"
#include "gtest/gtest.h"

namespace iommu::client::ctl {
namespace {

std::vector<Command> All() {
  std::vector<Command> all;
  for (auto group :
       {DmaCommands, AdminCommands, InspectCommands, SimulateCommands, BenchCommands}) {
    for (Command& c : group()) all.push_back(std::move(c));
  }
  return all;
}

CommandLine Split(const std::vector<std::string>& argv) {
  absl::StatusOr<CommandLine> line = SplitCommandLine(argv, All());
  EXPECT_TRUE(line.ok()) << line.status();
  return line.ok() ? *line : CommandLine();
}

TEST(CommandLineTest, FlagsGoAnywhere) {
  const std::vector<std::string> want_global = {"--device=nic0", "--output=wide"};
  const std::vector<std::string> want_flags = {"--buffer=1", "--length=4096"};
  for (const std::vector<std::string>& argv : std::vector<std::vector<std::string>>{
           {"--device=nic0", "-o", "wide", "map", "--buffer=1", "--length=4096"},
           {"map", "--buffer=1", "--device=nic0", "--length=4096", "-owide"},
           {"--buffer=1", "map", "--device", "nic0", "--length", "4096", "--output=wide"},
           {"map", "--length=4096", "-o=wide", "--buffer", "1", "--device=nic0"}}) {
    CommandLine line = Split(argv);
    EXPECT_EQ(line.subcommand, "map");
    std::multiset<std::string> global(line.global.begin(), line.global.end());
    std::multiset<std::string> flags(line.flags.begin(), line.flags.end());
    EXPECT_EQ(global, std::multiset<std::string>(want_global.begin(), want_global.end()))
        << absl::StrJoin(argv, " ");
    EXPECT_EQ(flags, std::multiset<std::string>(want_flags.begin(), want_flags.end()))
        << absl::StrJoin(argv, " ");
    EXPECT_TRUE(line.positional.empty());
  }
}

TEST(CommandLineTest, GlobalValuesAreNotTakenForTheSubcommand) {
  CommandLine line = Split({"--target", "unix:/run/iommud.sock", "--session", "7", "stats"});
  EXPECT_EQ(line.subcommand, "stats");
  EXPECT_EQ(line.global,
            (std::vector<std::string>{"--target=unix:/run/iommud.sock", "--session=7"}));
}

TEST(CommandLineTest, TheSubcommandsOwnFlagWinsOverTheGlobalOne) {
  // keepalive --session names the lease to renew; before the subcommand it
  // is still keepalive's (the two mean the same session).
  CommandLine line = Split({"keepalive", "--session=9"});
  EXPECT_EQ(line.flags, (std::vector<std::string>{"--session=9"}));
  EXPECT_TRUE(line.global.empty());
  line = Split({"map", "--session=9", "--buffer=1"});
  EXPECT_EQ(line.global, (std::vector<std::string>{"--session=9"}));
}

TEST(CommandLineTest, HelpVersionJsonAndDashes) {
  EXPECT_TRUE(Split({"-h"}).help);
  CommandLine line = Split({"map", "--help"});
  EXPECT_TRUE(line.help);
  EXPECT_EQ(line.subcommand, "map");
  line = Split({"help", "map-sg"});
  EXPECT_EQ(line.subcommand, "help");
  EXPECT_EQ(line.positional, (std::vector<std::string>{"map-sg"}));
  EXPECT_TRUE(Split({"--version"}).version);
  EXPECT_EQ(Split({"--json", "stats"}).global, (std::vector<std::string>{"--output=json"}));
  line = Split({"unmap", "--dma-addr=0x10"});
  EXPECT_EQ(line.flags, (std::vector<std::string>{"--dma_addr=0x10"}));
  line = Split({"completion", "--", "bash"});
  EXPECT_EQ(line.positional, (std::vector<std::string>{"bash"}));
}

TEST(CommandLineTest, ErrorsNameTheArgument) {
  struct Case {
    std::vector<std::string> argv;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{"map", "--lenght=4K"},
            "flag=\"--lenght\": is not a flag of 'map' (iommuctl help map)"},
           {{"--bogus", "stats"},
            "flag=\"--bogus\": is not a flag of 'stats' (iommuctl help stats)"},
           {{"--bogus"}, "flag=\"--bogus\": is not a global flag (iommuctl help)"},
           {{"frobnicate"}, "subcommand=\"frobnicate\": unknown (iommuctl help lists them)"},
           {{"unmap", "--dma_addr"}, "flag=\"--dma_addr=A\": needs a value"},
           {{"stats", "-x"}, "flag=\"-x\": unknown short flag (only -h and -o exist)"},
           {{"stats", "--json=1"}, "--json=\"1\": takes no value (use -o)"},
       }) {
    absl::StatusOr<CommandLine> line = SplitCommandLine(c.argv, All());
    ASSERT_FALSE(line.ok()) << absl::StrJoin(c.argv, " ");
    EXPECT_EQ(line.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(line.status().message(), c.message);
  }
}

TEST(HelpTest, EverySubcommandAndFlagIsDescribed) {
  const std::vector<Command> commands = All();
  const std::string global = GlobalHelp(commands);
  for (const Flag& f : GlobalFlags()) {
    EXPECT_TRUE(absl::StrContains(global, absl::StrCat("--", f.name))) << f.name;
    EXPECT_FALSE(f.help.empty()) << f.name;
  }
  std::set<std::string> names;
  for (const Command& c : commands) {
    EXPECT_TRUE(names.insert(c.name).second) << "two subcommands named " << c.name;
    EXPECT_TRUE(absl::StrContains(global, absl::StrCat("\n  ", c.name, " "))) << c.name;
    EXPECT_FALSE(c.summary.empty()) << c.name;
    const std::string help = CommandHelp(c);
    EXPECT_TRUE(absl::StartsWith(help, absl::StrCat("Usage: iommuctl ", c.name))) << help;
    std::set<std::string> declared;
    for (const Flag& f : c.flags) {
      EXPECT_TRUE(declared.insert(f.name).second) << c.name << " declares --" << f.name << " twice";
      EXPECT_FALSE(f.help.empty()) << c.name << " --" << f.name;
      EXPECT_TRUE(absl::StrContains(help, absl::StrCat("  ", FlagSpelling(f))))
          << c.name << " --" << f.name;
      // A required flag is in the synopsis as it is spelled.
      if (f.required) {
        EXPECT_TRUE(absl::StrContains(Synopsis(c), FlagSpelling(f))) << c.name;
      }
    }
    // The synopsis names declared flags only (ATTRS stands for the DMA attributes).
    const std::string synopsis = Synopsis(c);
    static const std::regex kFlag("--([a-z_]+)");
    for (std::sregex_iterator it(synopsis.begin(), synopsis.end(), kFlag), end; it != end; ++it) {
      EXPECT_TRUE(declared.contains((*it)[1].str())) << c.name << ": " << synopsis;
    }
    for (absl::string_view line : absl::StrSplit(help, '\n')) {
      EXPECT_LE(line.size(), 100u) << c.name << ": " << line;
    }
  }
  for (absl::string_view line : absl::StrSplit(global, '\n')) EXPECT_LE(line.size(), 100u) << line;
}

TEST(HelpTest, VersionIsTheProjectVersion) {
  EXPECT_EQ(VersionText(), absl::StrCat("iommuctl ", IOMMU_BROKER_VERSION, "\n"));
  EXPECT_TRUE(std::regex_match(std::string(IOMMU_BROKER_VERSION), std::regex(R"(\d+\.\d+\.\d+)")));
}

// The completion script, run by bash as a completion would run it: the
// candidates for the text before the cursor.
// `wordbreaks`: bash's COMP_WORDBREAKS (its default splits at '=' too).
std::vector<std::string> Complete(const std::string& line, const std::string& wordbreaks = " ") {
  const std::string script = ::testing::TempDir() + "/iommuctl_completion.bash";
  std::ofstream(script) << BashCompletion(All());
  const std::string cmd =
      absl::StrCat("bash -c 'source ", script, "; COMP_LINE=\"", line,
                   "\"; COMP_POINT=${#COMP_LINE}; COMP_WORDBREAKS=\"", wordbreaks,
                   "\"; _iommuctl; "
                   "printf \"%s\\n\" \"${COMPREPLY[@]}\"' 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << out;
  std::vector<std::string> words = absl::StrSplit(out, '\n', absl::SkipEmpty());
  std::sort(words.begin(), words.end());
  return words;
}

TEST(CompletionTest, SubcommandsFlagsAndValues) {
  EXPECT_EQ(Complete("iommuctl ma"), (std::vector<std::string>{"map", "map-at", "map-sg"}));
  EXPECT_EQ(Complete("iommuctl --target unix:/x unm"),
            (std::vector<std::string>{"unmap", "unmap-range", "unmap-sg"}));
  EXPECT_EQ(Complete("iommuctl map --buf"), (std::vector<std::string>{"--buffer="}));
  // A global flag completes after the subcommand too.
  EXPECT_EQ(Complete("iommuctl map --dev"), (std::vector<std::string>{"--device="}));
  EXPECT_EQ(Complete("iommuctl map --direction=to"),
            (std::vector<std::string>{"--direction=to_device"}));
  EXPECT_EQ(Complete("iommuctl map --direction=to", " =:"),
            (std::vector<std::string>{"to_device"}));
  EXPECT_EQ(Complete("iommuctl -o w"), (std::vector<std::string>{"wide"}));
  EXPECT_EQ(Complete("iommuctl --output j"), (std::vector<std::string>{"json"}));
  EXPECT_EQ(Complete("iommuctl help get-"),
            (std::vector<std::string>{"get-buffer", "get-domain", "get-sgtable"}));
  EXPECT_EQ(Complete("iommuctl completion "), (std::vector<std::string>{"bash"}));
  // Every subcommand's flags, and only its own beside the global ones.
  for (const Command& c : All()) {
    std::vector<std::string> got = Complete(absl::StrCat("iommuctl ", c.name, " --"));
    for (const Flag& f : c.flags) {
      const std::string word = absl::StrCat("--", f.name, f.value.empty() ? "" : "=");
      EXPECT_TRUE(std::find(got.begin(), got.end(), word) != got.end()) << c.name << " " << word;
    }
    std::set<std::string> want;
    for (const Flag& f : c.flags) want.insert(f.name);
    for (const Flag& f : GlobalFlags()) want.insert(f.name);
    EXPECT_EQ(got.size(), want.size()) << c.name;
  }
}

}  // namespace
}  // namespace iommu::client::ctl
