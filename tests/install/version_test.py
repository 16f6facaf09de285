# SPDX-License-Identifier: Apache-2.0
"""One version string: project(iommu_broker VERSION x.y.z) in CMakeLists.txt
is what every part reports: `iommud --version`, `iommuctl --version` and
`iommuctl version`, the C++ SDK's generated client/version.h, the Python
package, the Debian packages CPack makes, the CHANGELOG's latest release and
the container image tags. (The installed SDK's Version() is install_test's,
through the example it builds; the .deb fields are deb_test's.)"""
import os
import re
import subprocess
import sys
import unittest

import harness as h

VERSION = h.project_version()


class VersionTest(unittest.TestCase):
    def test_the_version_is_semantic(self):
        self.assertRegex(VERSION, r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")

    def test_iommud(self):
        r = h.run(os.environ["IOMMUD"], "--version")
        self.assertEqual(r.stdout, f"iommud {VERSION}\n")

    def test_iommuctl(self):
        for args in (["--version"], ["version"], ["--target=unix:/nonexistent", "--version"]):
            r = h.run(os.environ["IOMMUCTL"], *args)
            self.assertEqual((r.returncode, r.stdout), (0, f"iommuctl {VERSION}\n"), args)

    def test_cpp_sdk_header(self):
        header = (h.BUILD_DIR / "client" / "include" / "client" / "version.h").read_text()
        self.assertIn(f'#define IOMMU_BROKER_VERSION "{VERSION}"\n', header)
        major, minor, patch = VERSION.split(".")
        self.assertIn(f"#define IOMMU_BROKER_VERSION_MAJOR {major}\n", header)
        self.assertIn(f"#define IOMMU_BROKER_VERSION_MINOR {minor}\n", header)
        self.assertIn(f"#define IOMMU_BROKER_VERSION_PATCH {patch}\n", header)

    def test_python_sdk(self):
        package = h.BUILD_DIR / "client" / "python"
        if not (package / "iommu_broker" / "_version.py").exists():
            self.skipTest("the Python SDK is not built here (see CMake's warning)")
        r = h.run(sys.executable, "-c", "import iommu_broker; print(iommu_broker.__version__)",
                  env=h.clean_env(PYTHONPATH=str(package)))
        self.assertEqual(r.stdout, f"{VERSION}\n")

    def test_debian_packages(self):
        config = (h.BUILD_DIR / "CPackConfig.cmake").read_text()
        self.assertIn(f'set(CPACK_PACKAGE_VERSION "{VERSION}")', config)
        self.assertIn('set(CPACK_DEBIAN_PACKAGE_RELEASE "1")', config)

    def test_changelog_latest_release(self):
        text = (h.SOURCE_DIR / "CHANGELOG.md").read_text()
        releases = re.findall(r"^## \[([^\]]+)\]", text, re.M)
        self.assertEqual(releases[:2], ["Unreleased", VERSION], releases)

    def test_image_tags(self):
        sys.path.insert(0, str(h.SOURCE_DIR / "tests" / "e2e"))
        import deploy_files as df
        self.assertEqual(df.project_version(), VERSION)
        for name in df.IMAGES:
            self.assertEqual(df.image_tags(name), [f"{name}:latest", f"{name}:{VERSION}"])
        k8s = (h.SOURCE_DIR / "deploy" / "k8s" / "iommud.yaml").read_text()
        self.assertEqual(re.findall(r"image: (iommu-broker/\S+)", k8s),
                         [f"iommu-broker/iommud:{VERSION}"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
