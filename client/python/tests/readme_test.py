# SPDX-License-Identifier: Apache-2.0
"""The README example runs as written against a real iommud.

The example targets `make run`'s daemon at unix:/tmp/iommud.sock; the test
starts a private iommud and substitutes its socket for that address, nothing
else.
"""
import os
import re
import subprocess
import sys

from iommud_harness import DaemonTestCase, run_tests

README = os.environ.get("IOMMU_PYTHON_README",
                        os.path.join(os.path.dirname(__file__), "..", "README.md"))
DEFAULT_TARGET = "unix:/tmp/iommud.sock"


def example_code() -> str:
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)
    if len(blocks) != 1:
        raise AssertionError(f"README.md: expected one python example, found {len(blocks)}")
    return blocks[0]


class ReadmeTest(DaemonTestCase):
    def test_example_runs_as_written(self):
        code = example_code()
        self.assertIn(DEFAULT_TARGET, code)
        code = code.replace(DEFAULT_TARGET, self.daemon.unix_target)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        out = result.stdout
        self.assertRegex(out, r"smmu0 ias=48")
        self.assertRegex(out, r"dma_addr=0x[0-9a-f]+ phys=0x[0-9a-f]+")
        self.assertIn("faulted: False", out)
        self.assertRegex(out, r"NotFound: dma_addr=0xdead000")
        self.assertRegex(out, r"fault \d+ 0x1000 nic0 TRANSLATION True")


if __name__ == "__main__":
    run_tests()
