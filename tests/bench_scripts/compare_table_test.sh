#!/usr/bin/env bash
# benchmarks/compare_table.awk (compare.sh's table) on made-up raw results of 3 rounds: medians,
# ratios against the targets, tg/hand, memory, contention, scaling with each round's probe. The memory lines come last, as they
# may in a run: the table once took the workload's unit from them and printed MB as GFLOP/s.
# Usage: compare_table_test.sh path/to/compare_table.awk
set -euo pipefail
table=$1
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cat >"$results" <<'END'
tapegrad deep-mlp-relu 1 ms 7.0
libtorch deep-mlp-relu 1 ms 10.0
libtorch deep-mlp-relu 1 others_cores 0.01
hand deep-mlp-relu 1 ms 7.0
tapegrad deep-mlp-relu 1 ms 9.0
libtorch deep-mlp-relu 1 ms 12.0
hand deep-mlp-relu 1 ms 6.0
tapegrad deep-mlp-relu 1 ms 8.0
libtorch deep-mlp-relu 1 ms 11.0
hand deep-mlp-relu 1 ms 8.0
tapegrad gemm 1 gflops 150
libtorch gemm 1 gflops 100
tapegrad deep-mlp-relu busy ms 9.6
libtorch deep-mlp-relu busy ms 60
tapegrad deep-mlp-relu 1 mem 10.0
libtorch deep-mlp-relu 1 mem 30.0
tapegrad wide-mlp 1 ms 10.0
probe wide-mlp 2 round_trip_ns 80.4
tapegrad wide-mlp 2 ms 5.0
tapegrad wide-mlp 1 ms 12.0
probe wide-mlp 2 round_trip_ns 366.0
tapegrad wide-mlp 2 ms 8.0
tapegrad wide-mlp 1 ms 11.0
probe wide-mlp 2 round_trip_ns 79.6
tapegrad wide-mlp 2 ms 6.0
END
out=$(awk -v workloads=deep-mlp-relu,gemm,wide-mlp -v threads=1,2 -f "$table" "$results" |
  tr -s ' ')
expect() {
  if ! grep -qxF -- "$1" <<<"$out"; then
    printf 'missing line: %s\nin the table:\n%s\n' "$1" "$out"
    exit 1
  fi
}
# medians 8 / 11 / 7: ratio 0.73 misses 0.70; tg/hand 1.14 misses 1.05
expect "deep-mlp-relu 1 8.00 ms 11.00 ms 0.73 <= 0.70 NO 0.01 7.00 ms 1.14 NO"
expect "gemm 1 150 GFLOP/s 100 GFLOP/s 1.50 >= 1.00 yes - - -"
expect "memory deep-mlp-relu 1 tapegrad 10.0 MB LibTorch 30.0 MB ratio 0.33"
expect "contended deep-mlp-relu tapegrad 9.60 ms (1.20x its uncontended 1-thread time, target <= 1.3: yes) LibTorch 60.00 ms (ratio 0.16)"
# medians 11 / 6: 1.83x; per round 10/5, 12/8, 11/6 with the probe's round trips
expect "scaling wide-mlp tapegrad 2 threads vs 1: 1.83x (target >= 1.75: yes); rounds 2.00x (80 ns) 1.50x (366 ns) 1.83x (80 ns)"
echo "compare_table: ok"
