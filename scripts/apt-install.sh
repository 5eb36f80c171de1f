#!/usr/bin/env bash
# Installs Debian packages quietly; the install-*-tools scripts call it with what they found
# missing. Usage: apt-install.sh CALLER PACKAGE...
set -euo pipefail
caller=$1
shift
if [ "$(id -u)" -ne 0 ]; then
  echo "$caller: need root to install: $* (or install them yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
