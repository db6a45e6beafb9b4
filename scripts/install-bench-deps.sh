#!/usr/bin/env bash
# The packages benchmarks/compare.sh compares with, on top of install-deps.sh's: LibTorch (the
# peer of ../shared/peers/libtorch) and the OpenMP build of OpenBLAS, the only one whose thread
# count LibTorch's GEMMs honour.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" libtorch-dev libopenblas0-openmp
