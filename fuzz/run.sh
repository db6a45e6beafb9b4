#!/usr/bin/env bash
# Builds the libFuzzer targets (IDX reader, checkpoint loader) with clang and runs each for a
# number of seconds:   fuzz/run.sh [SECONDS=60] [TARGET...]
# Needs clang and its runtime (Debian: sudo apt-get install clang libclang-rt-dev).
# Output, corpora and crash reproducers go to $FUZZ_OUT (default build/fuzz); a crash stops the
# run with a non-zero status and leaves crash-* files there (replay: ./fuzz_<t> crash-file).
set -euo pipefail

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(idx checkpoint)

root=$(cd "$(dirname "$0")/.." && pwd)
out=${FUZZ_OUT:-$root/build/fuzz}
cxx=${CLANGXX:-clang++}
if ! command -v "$cxx" > /dev/null; then
  echo "fuzz/run.sh: $cxx not found; install clang and libclang-rt-dev" >&2
  exit 1
fi
mkdir -p "$out"
cd "$out"

common=(-std=c++20 -g -O1 -I "$root/include" -I "$root/fuzz" -I /usr/include/eigen3)
sanitizers=-fsanitize=address,undefined
echo "== building seeds"
"$cxx" "${common[@]}" $sanitizers "$root/fuzz/make_seeds.cpp" -lz -o make_seeds
mkdir -p seeds/idx seeds/checkpoint
./make_seeds seeds/idx seeds/checkpoint

status=0
for t in "${targets[@]}"; do
  echo "== building fuzz_$t"
  "$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "$root/fuzz/fuzz_$t.cpp" -lz -o "fuzz_$t"
  mkdir -p "corpus/$t"
  args=(-max_total_time="$seconds" -print_final_stats=1 -max_len=8192 -timeout=10
        -rss_limit_mb=2048 -artifact_prefix="$out/$t-")
  [ "$t" = checkpoint ] && args+=(-dict="$root/fuzz/safetensors.dict")
  echo "== running fuzz_$t for ${seconds}s"
  if ! ./"fuzz_$t" "${args[@]}" "corpus/$t" "seeds/$t" > "fuzz_$t.log" 2>&1; then
    echo "fuzz_$t: FAILED (see $out/fuzz_$t.log and $out/$t-crash-*)"
    status=1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added" "fuzz_$t.log" |
    sed "s/^/fuzz_$t: /" || true
  grep -E "^Done|ERROR|SUMMARY" "fuzz_$t.log" | sed "s/^/fuzz_$t: /" || true
done
exit $status
