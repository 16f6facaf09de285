#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Generates a throw-away CA and certificates for the TLS integration tests
# (--auth=token and --auth=mtls):
#   ca.{crt,key}        the CA: clients verify the daemon with it; --tls_ca
#   server.{crt,key}    iommud's --tls_cert/--tls_key: DNS localhost,
#                       iommud.test, IP 127.0.0.1
#   nic0.{crt,key}      URI SAN spiffe://iommu-broker/device/nic0
#   nvme0.{crt,key}     DNS SAN nvme0.device.iommu
#   admin.{crt,key}     URI SAN spiffe://iommu-broker/admin
#   gpu0, sata0, tbt0   URI SANs of those devices (the isolation tests)
#   stranger.{crt,key}  signed by the CA, but its SAN names no identity
#   rogue.{crt,key}     URI SAN of nic0, signed by another CA
# Usage: gen_certs.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1.key" 2>/dev/null; }
ca() {  # name
  key "$1"
  openssl req -x509 -new -key "$1.key" -out "$1.crt" -days 2 -subj "/CN=$1" 2>/dev/null
}
leaf() {  # name ca san usage
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -out "$1.crt" \
    -days 2 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca
ca otherca
leaf server ca "DNS:localhost,DNS:iommud.test,IP:127.0.0.1" serverAuth
leaf nic0 ca "URI:spiffe://iommu-broker/device/nic0" clientAuth
leaf nvme0 ca "DNS:nvme0.device.iommu" clientAuth
leaf admin ca "URI:spiffe://iommu-broker/admin" clientAuth
for d in gpu0 sata0 tbt0; do leaf "$d" ca "URI:spiffe://iommu-broker/device/$d" clientAuth; done
leaf stranger ca "URI:spiffe://elsewhere/workload" clientAuth
leaf rogue otherca "URI:spiffe://iommu-broker/device/nic0" clientAuth
