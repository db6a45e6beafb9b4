#!/usr/bin/env bash
# benchmarks/ddp.sh: data-parallel training speed (the distributed issue's benchmark).
#
#   benchmarks/ddp.sh [--rounds N] [--workload small-resnet|wide-mlp|all] [extra bench_ddp flags]
#
# Builds bench_ddp (build/release) and runs, round after round, on each workload of
# benchmarks/workloads.hpp with the same per-rank batch:
#   1 rank      one process, one thread, no DistributedDataParallel (the baseline)
#   1 rank ddp  the same through DistributedDataParallel (its cost at one process: none expected)
#   2 ranks     mpirun -np 2, one thread each, DistributedDataParallel
#   2 threads   one process, two threads, no DistributedDataParallel
# and prints the medians: samples per second, the speedups over the baseline (the issue's target:
# >= 1.85 for 2 ranks on a 2-core machine), and the share of the allreduce time hidden behind
# the backward pass (1 - time the training thread waited / communication time). The load average
# before and after is printed too: above about 0.3 from other processes the figures are noisy.
# mpirun passes Open MPI's settings on from the environment, e.g. where its single-copy transport
# is slow (virtual machines): OMPI_MCA_btl_vader_single_copy_mechanism=none benchmarks/ddp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
workload=all
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --workload) workload="$2"; shift 2 ;;
    --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done

cmake --preset release >/dev/null
cmake --build --preset release --target bench_ddp >/dev/null
bench=build/release/benchmarks/bench_ddp
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --bind-to none)

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; ++r)); do
  "${mpi[@]}" -np 1 "$bench" --workload "$workload" --plain --threads 1 "${extra[@]}" | sed 's/^/plain1 /' >>"$out"
  "${mpi[@]}" -np 1 "$bench" --workload "$workload" --threads 1 "${extra[@]}" | sed 's/^/ddp1 /' >>"$out"
  "${mpi[@]}" -np 2 "$bench" --workload "$workload" --threads 1 "${extra[@]}" | sed 's/^/ddp2 /' >>"$out"
  "${mpi[@]}" -np 1 "$bench" --workload "$workload" --plain --threads 2 "${extra[@]}" | sed 's/^/threads2 /' >>"$out"
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "raw (one line per run):"
cat "$out"
echo
# Columns of a bench_ddp line after the config tag: $2 workload, then "... <x> samples/s ...
# hidden <h>% ...".
awk '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    cfg = $1; w = $2
    for (i = 1; i <= NF; ++i) {
      if ($i == "samples/s") sps[cfg, w] = sps[cfg, w] " " $(i - 1)
      if ($i == "ms/step" && $(i - 2) != "wait") step[cfg, w] = step[cfg, w] " " $(i - 1)
      if ($i == "hidden") { h = $(i + 1); sub("%", "", h); hid[cfg, w] = hid[cfg, w] " " h }
    }
    seen[w] = 1
  }
  END {
    printf "%-13s %12s %12s %8s %12s %8s %12s %8s %8s\n", "workload", "1 rank", "1 rank ddp", "ratio",
           "2 ranks", "speedup", "2 threads", "speedup", "hidden"
    for (w in seen) {
      b = median(sps["plain1", w]); d1 = median(sps["ddp1", w]); d2 = median(sps["ddp2", w])
      t2 = median(sps["threads2", w]); h = median(hid["ddp2", w])
      printf "%-13s %12.1f %12.1f %8.3f %12.1f %8.3f %12.1f %8.3f %7.1f%%\n", w, b, d1, d1 / b, d2,
             d2 / b, t2, t2 / b, h
    }
    print "(samples/s over all ranks, medians; speedups over 1 rank; hidden: share of the 2 ranks\x27"
    print " allreduce time not waited for)"
  }' "$out"
