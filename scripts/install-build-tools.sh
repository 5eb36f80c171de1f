#!/usr/bin/env bash
# Installs what compiling the hot modules with mypyc needs (setup.py): a C compiler and the
# headers of the Python that runs the build. Idempotent and quiet when both are present.
# Usage: install-build-tools.sh [PYTHON]   (default python3)
set -euo pipefail
python=${1:-python3}
need=()
# The compiler setuptools will call: the CC this Python was built with (gcc on Debian).
cc=$("$python" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')
command -v "$cc" >/dev/null 2>&1 || need+=(gcc libc6-dev)
include=$("$python" -c 'import sysconfig; print(sysconfig.get_path("include"))')
if [ ! -f "$include/Python.h" ]; then
  case "$include" in
    # Debian's own interpreters keep their headers in python3.X-dev.
    /usr/include/python3.*) need+=("$(basename "$include")-dev") ;;
    *)
      echo "install-build-tools: no Python.h in $include: install the headers of $python" >&2
      exit 1
      ;;
  esac
fi
[ ${#need[@]} -eq 0 ] && exit 0
bash "$(dirname "$0")/apt-install.sh" install-build-tools "${need[@]}"
