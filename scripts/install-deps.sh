#!/usr/bin/env bash
# Install the Debian 12 packages tapegrad needs to build, test and run its demo.
# Does nothing when all of them are already installed. Arguments: more packages to install.
set -euo pipefail

# libopenblas-dev: the release-blas preset (TAPEGRAD_USE_BLAS=ON) links the system BLAS.
# fortunes: the text examples/transformer_lm.cpp trains on (/usr/share/games/fortunes).
# doxygen: `make docs` (the API reference).
# libcli11-dev: CLI11, the command-line parser of the examples (not needed by the library).
# libopenmpi-dev, openmpi-bin: tapegrad::distributed (data-parallel training over MPI), its tests
# (run under mpirun) and examples.
PACKAGES="g++ cmake make libeigen3-dev googletest libgtest-dev libbenchmark-dev zlib1g-dev libopenblas-dev libopenmpi-dev openmpi-bin dataset-fashion-mnist fortunes doxygen libcli11-dev"

# Extra packages from the command line (scripts/install-bench-deps.sh passes the peer's).
PACKAGES="$PACKAGES $*"
missing=()
for pkg in $PACKAGES; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != "installed" ]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all required packages are installed."
  exit 0
fi

# Through sudo when not root; env, because sudo resets the environment.
as_root=(env DEBIAN_FRONTEND=noninteractive)
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo "${as_root[@]}")
fi
run() {
  echo "+ $*"
  "$@"
}

echo "install-deps: missing packages: ${missing[*]}"
run "${as_root[@]}" apt-get update
run "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
