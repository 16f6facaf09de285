#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Every source file names its license (SPDX) in its first lines.

  spdx.py          lists the tracked source files without the identifier; exit 1 if any
  spdx.py --fix    adds it as the first line (after a #! line)

`make format-check` (CI) runs the check.
"""
import subprocess
import sys

LICENSE = "Apache-2.0"
TAG = "SPDX-License-Identifier: " + LICENSE
SLASH = (".h", ".cc", ".proto")
HASH = (".py", ".sh", ".cmake")
HASH_NAMES = ("CMakeLists.txt", "Makefile", ".ci/run")


def comment(path: str):
    if path.endswith(SLASH):
        return "// " + TAG
    if path.endswith(HASH) or path.endswith(HASH_NAMES):
        return "# " + TAG
    return None


def main() -> int:
    fix = sys.argv[1:] == ["--fix"]
    files = subprocess.run(["git", "ls-files"], check=True, capture_output=True,
                           text=True).stdout.split()
    missing = []
    for path in files:
        line = comment(path)
        if line is None:
            continue
        with open(path) as f:
            text = f.read()
        if TAG in "\n".join(text.splitlines()[:3]):
            continue
        missing.append(path)
        if fix:
            if text.startswith("#!"):
                first, _, rest = text.partition("\n")
                text = first + "\n" + line + "\n" + rest
            else:
                text = line + "\n" + text
            with open(path, "w") as f:
                f.write(text)
    if missing and not fix:
        print("no SPDX-License-Identifier (run scripts/spdx.py --fix):")
        print("\n".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
