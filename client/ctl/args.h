// SPDX-License-Identifier: Apache-2.0
// iommuctl's command-line grammar:
//
//   iommuctl [GLOBAL FLAGS] SUBCOMMAND [FLAGS]
//
// Args holds the flags of one side (the global ones or a subcommand's) as
// `--name=value` or `--name` (a boolean true); cli.h splits a command line
// into the two sides, wherever each flag stands. Numbers are decimal or
// 0x-hex, with an optional K/M/G suffix (binary units: 4K = 4096). Each
// subcommand reads the flags it knows through the typed getters, then
// CheckAllUsed() rejects the rest, so a typo never passes silently.
//
// Thread-compatible.
#ifndef IOMMU_CLIENT_CTL_ARGS_H_
#define IOMMU_CLIENT_CTL_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace iommu::client::ctl {

// A number as iommuctl reads it; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<uint64_t> ParseNumber(absl::string_view field, absl::string_view text);

class Args {
 public:
  // `flags`: the --name=value arguments; `positional`: the rest, in order.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv);

  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(absl::string_view name) const;

  absl::StatusOr<uint64_t> U64(absl::string_view name);  // required
  absl::StatusOr<uint64_t> U64Or(absl::string_view name, uint64_t fallback);
  absl::StatusOr<std::optional<uint64_t>> OptionalU64(absl::string_view name);
  absl::StatusOr<std::string> String(absl::string_view name);  // required, non-empty
  std::string StringOr(absl::string_view name, absl::string_view fallback);
  absl::StatusOr<bool> Bool(absl::string_view name);  // absent: false
  absl::StatusOr<double> DoubleOr(absl::string_view name, double fallback);
  // One of `choices` (case-insensitive); absent: `fallback`.
  template <typename E>
  absl::StatusOr<E> Enum(absl::string_view name,
                         const std::vector<std::pair<std::string, E>>& choices, E fallback);

  // INVALID_ARGUMENT naming the first flag no getter asked for.
  absl::Status CheckAllUsed(absl::string_view subcommand) const;

  // The flags the subcommand declares (command.h). Reading, or asking Has()
  // of, any other flag is a bug in iommuctl, not in its input: it aborts,
  // so a flag cannot work without `iommuctl help` describing it.
  void Declare(std::set<std::string, std::less<>> names) { declared_ = std::move(names); }

 private:
  const std::string* Find(absl::string_view name);
  absl::Status BadChoice(absl::string_view name, const std::string& value,
                         const std::vector<std::string>& names) const;

  void CheckDeclared(absl::string_view name) const;

  std::map<std::string, std::string, std::less<>> flags_;
  std::set<std::string, std::less<>> used_;
  std::optional<std::set<std::string, std::less<>>> declared_;
  std::vector<std::string> positional_;
};

template <typename E>
absl::StatusOr<E> Args::Enum(absl::string_view name,
                             const std::vector<std::pair<std::string, E>>& choices, E fallback) {
  const std::string* value = Find(name);
  if (value == nullptr) return fallback;
  std::vector<std::string> names;
  for (const auto& [choice, e] : choices) {
    if (absl::EqualsIgnoreCase(choice, *value)) return e;
    names.push_back(choice);
  }
  return BadChoice(name, *value, names);
}

}  // namespace iommu::client::ctl

#endif  // IOMMU_CLIENT_CTL_ARGS_H_
