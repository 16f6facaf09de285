#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes iommuctl.1, the man page, from iommuctl's own help.

help2man renders `iommuctl --help` and `--version`; this script adds a
SUBCOMMANDS section with `iommuctl help SUB` of every subcommand, so the page
says what the binary says and nothing else.

  iommuctl_man.py IOMMUCTL OUTPUT
"""
import os
import subprocess
import sys
import tempfile


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def roff_escape(line: str) -> str:
    line = line.replace("\\", "\\e")
    line = line.replace("-", "\\-")  # a minus sign, not a hyphen: flags copy and paste
    # A line starting with . or ' is a roff request.
    if line.startswith((".", "'")):
        line = "\\&" + line
    return line


def subcommands(iommuctl: str) -> list[str]:
    names = []
    in_list = False
    for line in run(iommuctl, "--help").splitlines():
        if line == "Subcommands:":
            in_list = True
            continue
        if in_list:
            if not line.startswith("  "):
                break
            if not line.startswith("   "):  # continuation lines are indented further
                names.append(line.split()[0])
    if not names:
        sys.exit("iommuctl_man: iommuctl --help lists no subcommands")
    return names


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    iommuctl, output = sys.argv[1], sys.argv[2]
    include = ["[SUBCOMMANDS]"]
    for name in subcommands(iommuctl):
        text = run(iommuctl, "help", name).splitlines()
        include += [".SS " + name, ".nf"] + [roff_escape(l) for l in text] + [".fi"]
    include += [
        "[FILES]",
        ".TP",
        "/usr/share/bash-completion/completions/iommuctl",
        "bash completion (also printed by \\fBiommuctl completion bash\\fR)",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".h2m", delete=False) as f:
        f.write("\n".join(include) + "\n")
        include_path = f.name
    try:
        subprocess.run(
            ["help2man", "--no-info", "--section=1",
             "--name=the command-line client of iommud, the IOMMU broker",
             "--include=" + include_path, "--output=" + output, iommuctl],
            check=True)
    finally:
        os.unlink(include_path)


if __name__ == "__main__":
    main()
