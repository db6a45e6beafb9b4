#!/usr/bin/env bash
# compare.sh: tapegrad against the LibTorch peer (../shared/peers/libtorch) on the speed issue's
# workloads, in interleaved rounds, and the table of ratios.
#
#   benchmarks/compare.sh [--rounds N] [--threads 1,2] [--only deep-mlp-relu,gemm,...] [--blas]
#                         [--contended]
#
# Builds bench_workloads and bench_core (Release, -march=native) in build/compare (build/compare-blas
# with --blas: TAPEGRAD_USE_BLAS=ON), finds or builds peer_bench, then for every round, thread
# count and workload runs tapegrad and the peer one after the other (alternating which goes
# first), so both see the same machine load. Each figure is the median over the rounds of each
# run's median (tapegrad: of 15 short Google Benchmark repetitions; LibTorch: of its steps), in ms per
# training step, GFLOP/s for gemm, µs per op for op-overhead; ratio = tapegrad / LibTorch.
#
# Environment: PEER_BENCH=path/to/peer_bench (else build-peer/peer_bench, ../build-peer/peer_bench,
# else built from ../shared/peers/libtorch into build-peer when libtorch-dev is installed; without
# it only tapegrad's figures are printed). Both programs run with glibc's malloc thresholds pinned,
# as the peer's README asks, and with OPENBLAS_CORETYPE set when OpenBLAS does not recognise the
# CPU (it then falls back to its slowest kernels, "Prescott"; LibTorch's GEMMs go through it).
# The hand-written Eigen step of the MLP workloads (../shared/peers/eigen_mlp.cpp, no autograd;
# with --blas built with EIGEN_USE_BLAS like tapegrad) runs in the same rounds when its source
# is there: column "hand", and tapegrad's cost over it (target <= 1.05).
# Memory: after the table, one line per workload and thread count, "memory <workload> <threads>
# tapegrad <x> MB LibTorch <y> MB ratio <r>": the peak resident set during the training steps
# minus the one before them, each workload in its own process (the peer's mem_mb; tapegrad's
# bench_workloads memory/<workload>, bench_rnn BM_LSTMMemory).
# Placement: before each tapegrad row at 2+ threads, bench_machine's BM_CoreRoundTrip times a
# cache line between the first two CPUs and back; on a VM the host may give those vCPUs near or
# far cores (70-95 against ~365 ns here, 2-thread steps up to 1.5x slower on far ones), and the
# scaling lines print it for each round next to that round's speed-up.
# --contended: the same rows again at the default thread count (every core) with a busy loop
# pinned to the last core, as on a laptop or a shared CI runner; target: within 1.3x of the
# uncontended 1-thread time, and never slower than LibTorch under the same contention.
# The peer must run on the OpenMP OpenBLAS (libopenblas0-openmp): with the pthread build, whose
# thread pool ignores the thread count, its figures are not comparable and the script stops.
# Install the peer's packages: scripts/install-bench-deps.sh.
# Raw results: build/compare*/results.tsv. Needs only bash, cmake, awk (and g++ for the hand step).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3
threads=1,2
only=deep-mlp-relu,deep-mlp-sigmoid,deep-mlp-layernorm,wide-mlp,small-resnet,lstm,transformer-lm,op-overhead,gemm
blas=OFF
contended=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --blas) blas=ON; shift ;;
    --contended) contended=1; shift ;;
    -h | --help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a thread_list <<<"$threads"
IFS=, read -r -a workload_list <<<"$only"

# ---- build tapegrad's benchmarks ----
build=$root/build/compare
[ "$blas" = ON ] && build=$root/build/compare-blas
echo "== building tapegrad benchmarks in $build (Release, TAPEGRAD_USE_BLAS=$blas)"
mkdir -p "$build"
if ! { cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_USE_BLAS=$blas \
  -DTAPEGRAD_BUILD_TESTS=OFF -DTAPEGRAD_BUILD_EXAMPLES=OFF -DTAPEGRAD_BUILD_BENCHMARKS=ON &&
  cmake --build "$build" --target bench_workloads bench_core bench_rnn bench_machine -j2; } >"$build/build.log" 2>&1; then
  tail -n 30 "$build/build.log"
  echo "compare.sh: the build failed (log: $build/build.log)" >&2
  exit 1
fi
bench_workloads=$build/benchmarks/bench_workloads
bench_core=$build/benchmarks/bench_core
bench_rnn=$build/benchmarks/bench_rnn
bench_machine=$build/benchmarks/bench_machine

# ---- find or build the peer ----
peer=${PEER_BENCH:-}
if [ -z "$peer" ]; then
  for p in "$root/build-peer/peer_bench" "$root/../build-peer/peer_bench"; do
    if [ -x "$p" ]; then peer=$p; break; fi
  done
fi
if [ -z "$peer" ]; then
  peer_src=$root/../shared/peers/libtorch
  if [ "$(dpkg-query -W -f='${db:Status-Status}' libtorch-dev 2>/dev/null)" = installed ] &&
    [ -f "$peer_src/CMakeLists.txt" ]; then
    echo "== building the LibTorch peer in $root/build-peer"
    mkdir -p "$root/build-peer"
    if ! { cmake -S "$peer_src" -B "$root/build-peer" -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$root/build-peer" -j2; } >"$root/build-peer/build.log" 2>&1; then
      tail -n 30 "$root/build-peer/build.log"
      echo "compare.sh: building the peer failed (log: $root/build-peer/build.log)" >&2
      exit 1
    fi
    peer=$root/build-peer/peer_bench
  else
    echo "== LibTorch peer skipped: libtorch-dev is not installed (apt-get install libtorch-dev" \
      "libopenblas0-openmp) or $peer_src is missing; printing tapegrad's figures only"
  fi
fi

# ---- the peer's BLAS: the OpenMP OpenBLAS, or its thread counts mean nothing ----
if [ -n "$peer" ]; then
  peer_blas=$("$peer" --only gemm --threads 1 --warmup 0 --min-steps 1 --min-seconds 0 2>&1 |
    sed -n 's/^# blas: //p' | head -n1)
  echo "== LibTorch's BLAS: ${peer_blas:-unknown}"
  case "$peer_blas" in
    *openblas-openmp*) ;;
    *)
      echo "compare.sh: the LibTorch peer does not run on the OpenMP OpenBLAS (its BLAS:" \
        "'${peer_blas:-none found}'), so its thread counts are not honoured and the comparison" \
        "is unfair. Install libopenblas0-openmp (scripts/install-bench-deps.sh) and rebuild" \
        "the peer (rm -rf build-peer), or run it with" \
        "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp" >&2
      exit 1
      ;;
  esac
fi

# ---- the hand-written Eigen step, built with tapegrad's flags and GEMM back end ----
hand=
hand_src=$root/../shared/peers/eigen_mlp.cpp
if [ -f "$hand_src" ]; then
  hand=$build/eigen_mlp
  hand_flags=(-O3 -march=native -DNDEBUG -fopenmp -I/usr/include/eigen3)
  [ "$blas" = ON ] && hand_flags+=(-DEIGEN_USE_BLAS -lopenblas)
  if ! g++ "$hand_src" -o "$hand" "${hand_flags[@]}" >"$build/eigen_mlp.log" 2>&1; then
    echo "== hand-written Eigen step skipped: it did not build (log: $build/eigen_mlp.log)"
    hand=
  fi
fi

# ---- environment shared by both programs ----
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=1073741824
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -n "$peer" ]; then
  core=$(OPENBLAS_VERBOSE=2 "$peer" --only gemm --threads 1 --warmup 0 --min-steps 1 \
    --min-seconds 0 2>&1 | sed -n 's/^Core: //p' | head -n1)
  if [ "$core" = Prescott ]; then
    if grep -qw avx512f /proc/cpuinfo; then
      export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then
      export OPENBLAS_CORETYPE=Haswell
    fi
    [ -n "${OPENBLAS_CORETYPE:-}" ] &&
      echo "== OpenBLAS does not recognise this CPU (core '$core'): OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE"
  fi
fi

results=$build/results.tsv
: >"$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# Google Benchmark JSON → "tapegrad <workload> <threads> <metric> <value>" lines (awk: the
# JSON has one field per line). For step benchmarks: ms; gemm: GFLOP/s; op-overhead: µs/op.
gb_extract() {  # $1 = workload, $2 = threads, $3 = json file
  awk -v w="$1" -v t="$2" '
    /"aggregate_name":/ { agg = $2; gsub(/[",]/, "", agg) }
    /"real_time":/ { rt = $2; gsub(/,/, "", rt) }
    /"GFLOPS":/ { gf = $2; gsub(/,/, "", gf) }
    /"us_per_op":/ { us = $2; gsub(/,/, "", us) }
    /^    }/ {
      if (agg == "median") {
        if (w == "gemm") print "tapegrad", w, t, "gflops", gf
        else if (w == "op-overhead") print "tapegrad", w, t, "us", us
        else print "tapegrad", w, t, "ms", rt
      }
      agg = ""; rt = ""; gf = ""; us = ""
    }' "$3"
}

run_tapegrad() {  # $1 = workload, $2 = threads[, $3 = the label of the threads column]
  local json=$build/last.json filter bin
  if [ -z "${3:-}" ] && (($2 > 1)); then run_probe "$1" "$2"; fi
  case "$1" in
    gemm) bin=$bench_core; filter="^BM_GemmFloat/$2/" ;;
    op-overhead) bin=$bench_core; filter="^BM_TapeOverhead/flush_denormal:0/" ;;
    lstm) bin=$bench_rnn; filter="^BM_LSTM/$2/" ;;
    *) bin=$bench_workloads; filter="^step/$1/threads:$2/" ;;
  esac
  # Many short repetitions (one to a few steps each): their median is, like the peer's, a
  # median of single steps, which a preempted step does not move.
  "$bin" --benchmark_filter="$filter" --benchmark_repetitions=15 --benchmark_min_time=0.05 \
    --benchmark_report_aggregates_only=true --benchmark_format=json >"$json" 2>/dev/null
  gb_extract "$1" "${3:-$2}" "$json" >>"$results"
}

run_probe() {  # $1 = workload, $2 = threads: which cores the host gave us (bench_machine's comment)
  "$bench_machine" --benchmark_filter='^BM_CoreRoundTrip' --benchmark_format=json 2>/dev/null |
    awk -v w="$1" -v t="$2" '/"round_trip_ns":/ {
      v = $2; gsub(/,/, "", v); print "probe", w, t, "round_trip_ns", v }' >>"$results"
}

run_tapegrad_memory() {  # $1 = workload, $2 = threads: mem_MB of a process of its own
  local filter bin
  case "$1" in
    gemm | op-overhead) return 0 ;;
    lstm) bin=$bench_rnn; filter="^BM_LSTMMemory/$2/" ;;
    *) bin=$bench_workloads; filter="^memory/$1/threads:$2/" ;;
  esac
  "$bin" --benchmark_filter="$filter" --benchmark_format=json 2>/dev/null |
    awk -v w="$1" -v t="$2" '/"mem_MB":/ { v = $2; gsub(/,/, "", v); print "tapegrad", w, t, "mem", v }' \
      >>"$results"
}

run_peer() {  # $1 = workload, $2 = threads[, $3 = the label of the threads column]
  [ -n "$peer" ] || return 0
  "$peer" --only "$1" --threads "$2" --min-seconds 1 2>/dev/null | awk -v w="$1" -v t="${3:-$2}" '
    /^workload=/ {
      for (i = 1; i <= NF; ++i) { split($i, kv, "="); f[kv[1]] = kv[2] }
      if (w == "gemm") print "libtorch", w, t, "gflops", f["gflops_median"]
      else if (w == "op-overhead") print "libtorch", w, t, "us", f["us_per_op"]
      else print "libtorch", w, t, "ms", f["median_ms"]
      if (w != "gemm" && w != "op-overhead") print "libtorch", w, t, "mem", f["mem_mb"]
      print "libtorch", w, t, "others_cores", f["others_cores"]
    }' >>"$results"
}

run_hand() {  # $1 = threads: the three MLP workloads eigen_mlp.cpp times
  [ -n "$hand" ] || return 0
  # OpenBLAS (with --blas) takes its thread count from OpenMP, not from Eigen::setNbThreads.
  OMP_NUM_THREADS=$1 "$hand" "$1" | awk '/^eigen-hand / {
      split($3, t, "="); split($4, m, "="); print "hand", $2, t[2], "ms", m[2] }' >>"$results"
}

for ((r = 1; r <= rounds; ++r)); do
  echo "== round $r/$rounds ($(cut -d' ' -f1 /proc/loadavg) load)"
  for t in "${thread_list[@]}"; do
    run_hand "$t"
    for w in "${workload_list[@]}"; do
      # op-overhead: tapegrad's benchmark runs on one thread (tiny tensors never go parallel).
      if [ "$w" = op-overhead ] && [ "$t" != 1 ]; then continue; fi
      if (((r + t) % 2)); then
        run_tapegrad "$w" "$t"
        run_peer "$w" "$t"
      else
        run_peer "$w" "$t"
        run_tapegrad "$w" "$t"
      fi
      if ((r == 1)); then run_tapegrad_memory "$w" "$t"; fi
    done
  done
done

# ---- --contended: the same rows at the default thread count beside a busy core ----
cores=$(nproc)
if ((contended)); then
  taskset -c $((cores - 1)) bash -c 'while :; do :; done' &
  busy=$!
  trap 'kill $busy 2>/dev/null || true' EXIT
  for ((r = 1; r <= rounds; ++r)); do
    echo "== contended round $r/$rounds (a busy loop on core $((cores - 1)))"
    for w in "${workload_list[@]}"; do
      [ "$w" = op-overhead ] && continue
      if ((r % 2)); then
        run_tapegrad "$w" "$cores" busy
        run_peer "$w" "$cores" busy
      else
        run_peer "$w" "$cores" busy
        run_tapegrad "$w" "$cores" busy
      fi
    done
  done
  kill "$busy" 2>/dev/null || true
  wait "$busy" 2>/dev/null || true
  trap - EXIT
fi

echo
echo "tapegrad $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?'), Release," \
  "-march=native, TAPEGRAD_USE_BLAS=$blas, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto};" \
  "$rounds rounds; load average $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
awk -v workloads="$only" -v threads="$threads" -f "$root/benchmarks/compare_table.awk" "$results"
