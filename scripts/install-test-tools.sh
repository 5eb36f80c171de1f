#!/usr/bin/env bash
# Installs the Debian tools the tests and benchmarks drive: nginx (bench upstream and reference
# proxy), wrk (load generator), prometheus/promtool (alert rules and the real-scrape test), the
# openssl CLI (the TLS benchmark's certificate), curl, and nghttp/h2load (HTTP/2 clients); then
# builds h2spec from ../shared when it is there (scripts/build-h2spec.sh). Idempotent and quiet
# when everything is present.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/build-h2spec.sh" >/dev/null || echo "install-test-tools: h2spec did not build" >&2
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[ ${#need[@]} -eq 0 ] && exit 0
bash "$(dirname "$0")/apt-install.sh" install-test-tools "${need[@]}"
# Debian's packages start their services on install; the tests start their own on loopback.
for svc in nginx prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  pkill -x "$svc" >/dev/null 2>&1 || true
done
