# SPDX-License-Identifier: Apache-2.0
"""A throw-away PKI for mTLS tests, made with the openssl CLI at test time."""
import os
import subprocess


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(cwd, name, cn):
    _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def make_ca(cwd, name):
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
         cwd=cwd)


def make_cert(cwd, ca, name, san):
    """Signs `name`.pem/.key with `ca`; `san` is an openssl subjectAltName
    value, e.g. "URI:spiffe://iommu-broker/device/nic0"."""
    _key_and_csr(cwd, name, name)
    ext = os.path.join(cwd, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=cwd)
    return os.path.join(cwd, f"{name}.pem"), os.path.join(cwd, f"{name}.key")


def make_pki(cwd):
    """ca.pem; server (localhost, 127.0.0.1); clients nic0, nvme0 (a DNS SAN),
    admin; and `rogue`, a nic0 certificate from another CA."""
    make_ca(cwd, "ca")
    make_ca(cwd, "rogue-ca")
    make_cert(cwd, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    make_cert(cwd, "ca", "nic0", "URI:spiffe://iommu-broker/device/nic0")
    make_cert(cwd, "ca", "nvme0", "DNS:nvme0.device.iommu")
    make_cert(cwd, "ca", "admin", "URI:spiffe://iommu-broker/admin")
    make_cert(cwd, "rogue-ca", "rogue", "URI:spiffe://iommu-broker/device/nic0")
    return {n: (os.path.join(cwd, f"{n}.pem"), os.path.join(cwd, f"{n}.key"))
            for n in ("ca", "server", "nic0", "nvme0", "admin", "rogue")}
