#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The man page and the completion script the build generates from iommuctl.

  iommuctl_man_test.py IOMMUCTL MANPAGE COMPLETION
"""
import re
import subprocess
import sys
import unittest

IOMMUCTL, MANPAGE, COMPLETION = sys.argv[1:4]
del sys.argv[1:4]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


class ManPageTest(unittest.TestCase):
    def setUp(self) -> None:
        with open(MANPAGE) as f:
            self.page = f.read()

    def test_renders_without_warnings(self) -> None:
        r = run("groff", "-man", "-Tutf8", "-ww", "-z", MANPAGE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")

    def test_names_the_version_of_the_binary(self) -> None:
        version = run(IOMMUCTL, "--version").stdout.split()[-1]
        self.assertRegex(version, r"^\d+\.\d+\.\d+$")
        self.assertRegex(self.page, r'\.TH IOMMUCTL "1" "[^"]*" "iommuctl ' + re.escape(version))

    def test_describes_every_subcommand_and_flag(self) -> None:
        help_text = run(IOMMUCTL, "--help").stdout
        names = re.findall(r"^  ([a-z][a-z-]+)  ", help_text.split("Subcommands:")[1], re.M)
        self.assertGreater(len(names), 30)
        self.assertIn(".SH SUBCOMMANDS", self.page)
        for name in names:
            self.assertIn(".SS " + name + "\n", self.page)
            for flag in re.findall(r"^  (--[a-z_]+)", run(IOMMUCTL, "help", name).stdout, re.M):
                section = self.page.split(".SS " + name + "\n")[1].split(".SS ")[0]
                # groff escapes the dashes of flags (\-\-name).
                self.assertIn(flag.replace("-", "\\-"), section, name)
        # The global flags, from --help.
        for flag in ("target", "device", "output", "version"):
            self.assertIn("\\-\\-" + flag, self.page)


class CompletionFileTest(unittest.TestCase):
    def test_is_what_iommuctl_prints(self) -> None:
        with open(COMPLETION) as f:
            self.assertEqual(f.read(), run(IOMMUCTL, "completion", "bash").stdout)

    def test_bash_accepts_it(self) -> None:
        r = run("bash", "-n", COMPLETION)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
