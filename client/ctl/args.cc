// SPDX-License-Identifier: Apache-2.0
#include "client/ctl/args.h"

#include <cstdlib>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/status.h"

namespace iommu::client::ctl {

absl::StatusOr<uint64_t> ParseNumber(absl::string_view field, absl::string_view text) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  const bool hex = absl::StartsWithIgnoreCase(digits, "0x");
  int shift = 0;
  if (!hex && !digits.empty()) {  // suffixes on decimal numbers only
    switch (absl::ascii_toupper(digits.back())) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      default:
        break;
    }
    if (shift != 0) digits.remove_suffix(1);
  }
  uint64_t value = 0;
  bool ok = false;
  if (hex) {
    ok = digits.size() > 2 && absl::SimpleHexAtoi(digits.substr(2), &value);
  } else {
    ok = !digits.empty() && absl::ascii_isdigit(digits.front()) && absl::SimpleAtoi(digits, &value);
  }
  if (!ok) return InvalidField(field, text, "not a number (decimal or 0x-hex, optional K/M/G)");
  if (shift != 0 && value > (~uint64_t{0} >> shift))
    return InvalidField(field, text, "overflows 64 bits");
  return value << shift;
}

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv) {
  Args args;
  bool only_positional = false;
  for (const std::string& arg : argv) {
    if (only_positional || !absl::StartsWith(arg, "--")) {
      args.positional_.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    const size_t eq = arg.find('=');
    std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::string value = eq == std::string::npos ? "true" : arg.substr(eq + 1);
    if (name.empty()) return InvalidField("flag", arg, "has no name");
    // --dma-addr and --dma_addr are one flag.
    for (char& c : name) c = c == '-' ? '_' : c;
    if (!args.flags_.emplace(name, std::move(value)).second) {
      return InvalidField("flag", arg, "given twice");
    }
  }
  return args;
}

void Args::CheckDeclared(absl::string_view name) const {
  if (declared_.has_value() && !declared_->contains(name)) {
    std::cerr << "iommuctl: internal error: flag --" << name
              << " is read but not declared by its subcommand\n";
    std::abort();
  }
}

bool Args::Has(absl::string_view name) const {
  CheckDeclared(name);
  return flags_.find(name) != flags_.end();
}

const std::string* Args::Find(absl::string_view name) {
  CheckDeclared(name);
  auto it = flags_.find(name);
  if (it == flags_.end()) return nullptr;
  used_.insert(it->first);
  return &it->second;
}

absl::StatusOr<uint64_t> Args::U64(absl::string_view name) {
  const std::string* value = Find(name);
  if (value == nullptr) return InvalidField(absl::StrCat("--", name), "", "is required");
  return ParseNumber(absl::StrCat("--", name), *value);
}

absl::StatusOr<uint64_t> Args::U64Or(absl::string_view name, uint64_t fallback) {
  if (!Has(name)) return fallback;
  return U64(name);
}

absl::StatusOr<std::optional<uint64_t>> Args::OptionalU64(absl::string_view name) {
  if (!Has(name)) return std::optional<uint64_t>();
  absl::StatusOr<uint64_t> value = U64(name);
  if (!value.ok()) return value.status();
  return std::optional<uint64_t>(*value);
}

absl::StatusOr<std::string> Args::String(absl::string_view name) {
  const std::string* value = Find(name);
  if (value == nullptr || value->empty()) {
    return InvalidField(absl::StrCat("--", name), "", "is required");
  }
  return *value;
}

std::string Args::StringOr(absl::string_view name, absl::string_view fallback) {
  const std::string* value = Find(name);
  return value == nullptr ? std::string(fallback) : *value;
}

absl::StatusOr<bool> Args::Bool(absl::string_view name) {
  const std::string* value = Find(name);
  if (value == nullptr) return false;
  if (*value == "true" || *value == "1") return true;
  if (*value == "false" || *value == "0") return false;
  return InvalidField(absl::StrCat("--", name), *value, "must be true or false");
}

absl::StatusOr<double> Args::DoubleOr(absl::string_view name, double fallback) {
  const std::string* value = Find(name);
  if (value == nullptr) return fallback;
  double d = 0;
  if (!absl::SimpleAtod(*value, &d) || d < 0) {
    return InvalidField(absl::StrCat("--", name), *value, "must be a non-negative number");
  }
  return d;
}

absl::Status Args::BadChoice(absl::string_view name, const std::string& value,
                             const std::vector<std::string>& names) const {
  return InvalidField(absl::StrCat("--", name), value,
                      absl::StrCat("must be one of ", absl::StrJoin(names, "|")));
}

absl::Status Args::CheckAllUsed(absl::string_view subcommand) const {
  for (const auto& [name, value] : flags_) {
    if (!used_.contains(name)) {
      return InvalidField("flag", absl::StrCat("--", name),
                          absl::StrCat("is not a flag of '", subcommand, "'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu::client::ctl
