# The table of benchmarks/compare.sh, from its raw results (one figure per line:
#   <who> <workload> <threads|busy> <unit|mem|others_cores|round_trip_ns> <value>
# who: tapegrad, libtorch, hand or probe), run as
#   awk -v workloads=deep-mlp-relu,gemm,... -v threads=1,2 -f compare_table.awk results.tsv
# Every figure is the median over the rounds (the lines of the same key).
function median(key,   n, i, j, v, tmp) {
  n = split(vals[key], v, " ")
  for (i = 2; i <= n; ++i) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; --j) {
    tmp = v[j]; v[j] = v[j - 1]; v[j - 1] = tmp }
  if (n == 0) return ""
  return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
function fmt(x, m) {
  if (x == "") return "-"
  return m == "ms" ? sprintf("%.2f ms", x) : m == "us" ? sprintf("%.3f us/op", x) \
                   : sprintf("%.0f GFLOP/s", x)
}
{
  key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4
  vals[key] = vals[key] (vals[key] == "" ? "" : " ") $5
  # The unit of each workload figure (ms, gflops, us), never that of a side figure (mem), whose
  # lines may come last.
  if ($1 != "probe" && $4 != "others_cores" && $4 != "mem") metric[$2] = $4
}
END {
  printf "%-19s %7s %14s %14s %6s %7s %5s %7s %10s %8s\n", "workload", "threads", "tapegrad", \
    "LibTorch", "ratio", "target", "met?", "others", "hand", "tg/hand"
  nw = split(workloads, W, ","); nt = split(threads, TH, ",")
  for (i = 1; i <= nw; ++i) for (j = 1; j <= nt; ++j) {
    w = W[i]; t = TH[j]; m = metric[w]
    if (m == "") continue
    tg = median("tapegrad" SUBSEP w SUBSEP t SUBSEP m)
    lt = median("libtorch" SUBSEP w SUBSEP t SUBSEP m)
    if (tg == "" && lt == "") continue
    oc = median("libtorch" SUBSEP w SUBSEP t SUBSEP "others_cores")
    if (tg != "") tgmed[w, t] = tg
    # ratio = tapegrad / LibTorch; for gemm (GFLOP/s) higher is better.
    target = w == "small-resnet" ? "<= 0.85" : w == "op-overhead" ? "<= 0.02" \
           : w == "gemm" ? ">= 1.00" : w ~ /^deep-mlp/ ? "<= 0.70" : w == "wide-mlp" ? "<= 0.75" \
           : "<= 0.80"
    ratio = "-"; met = "-"
    if (tg != "" && lt != "" && tg > 0 && lt > 0) {
      r = tg / lt; ratio = sprintf("%.2f", r)
      met = (w == "gemm" ? r >= 1.0 : r <= substr(target, 4) + 0) ? "yes" : "NO"
    }
    hd = median("hand" SUBSEP w SUBSEP t SUBSEP m)
    over = "-"
    if (tg != "" && hd != "" && hd > 0)
      over = sprintf("%.2f%s", tg / hd, tg / hd <= 1.05 ? "" : " NO")
    printf "%-19s %7s %14s %14s %6s %7s %5s %7s %10s %8s\n", w, t, fmt(tg, m), fmt(lt, m), ratio, \
      target, met, oc == "" ? "-" : oc, hd == "" ? "-" : sprintf("%.2f ms", hd), over
  }
  # Scaling target: 2 threads at least 1.75x faster than 1 on wide-mlp and small-resnet; then
  # each round's speed-up and the core-to-core round trip measured before its 2-thread run.
  for (k = 1; k <= 2; ++k) {
    w = k == 1 ? "wide-mlp" : "small-resnet"
    if (!(((w, 1) in tgmed) && ((w, 2) in tgmed))) continue
    printf "scaling %-12s tapegrad 2 threads vs 1: %.2fx (target >= 1.75: %s)", w, \
      tgmed[w, 1] / tgmed[w, 2], (tgmed[w, 1] / tgmed[w, 2] >= 1.75 ? "yes" : "NO")
    m = metric[w]
    n1 = split(vals["tapegrad" SUBSEP w SUBSEP 1 SUBSEP m], one, " ")
    n2 = split(vals["tapegrad" SUBSEP w SUBSEP 2 SUBSEP m], two, " ")
    np = split(vals["probe" SUBSEP w SUBSEP 2 SUBSEP "round_trip_ns"], rt, " ")
    if (n1 == n2 && n1 >= 1) {
      printf "; rounds"
      for (r = 1; r <= n1; ++r)
        printf " %.2fx%s", one[r] / two[r], r <= np ? sprintf(" (%.0f ns)", rt[r]) : ""
    }
    printf "\n"
  }
  # Peak step memory (target: at most as much as LibTorch).
  for (i = 1; i <= nw; ++i) for (j = 1; j <= nt; ++j) {
    w = W[i]; t = TH[j]
    tm = median("tapegrad" SUBSEP w SUBSEP t SUBSEP "mem")
    lm = median("libtorch" SUBSEP w SUBSEP t SUBSEP "mem")
    if (tm == "" && lm == "") continue
    printf "memory %s %s tapegrad %s MB LibTorch %s MB ratio %s\n", w, t, \
      tm == "" ? "-" : sprintf("%.1f", tm), lm == "" ? "-" : sprintf("%.1f", lm), \
      (tm != "" && lm != "" && lm > 0) ? sprintf("%.2f%s", tm / lm, tm <= lm ? "" : " NO") : "-"
  }
  # --contended: every core asked for, one of them busy.
  for (i = 1; i <= nw; ++i) {
    w = W[i]; m = metric[w]
    tb = median("tapegrad" SUBSEP w SUBSEP "busy" SUBSEP m)
    lb = median("libtorch" SUBSEP w SUBSEP "busy" SUBSEP m)
    if (tb == "" || m != "ms") continue
    t1 = ((w, 1) in tgmed) ? tgmed[w, 1] : ""
    printf "contended %-19s tapegrad %s (%s its uncontended 1-thread time, target <= 1.3: %s)" \
      " LibTorch %s (%s)\n", w, fmt(tb, m), t1 == "" ? "-" : sprintf("%.2fx", tb / t1), \
      t1 == "" ? "-" : (tb / t1 <= 1.3 ? "yes" : "NO"), fmt(lb, m), \
      lb == "" ? "-" : sprintf("ratio %.2f%s", tb / lb, tb <= lb ? "" : " NO")
  }
  print "ratio = tapegrad / LibTorch (gemm: GFLOP/s, higher is better); medians over the rounds;"
  print "others = cores used by other processes during the LibTorch run (above ~0.2: noisy)"
  print "(ns) = a cache line between the two cores and back, before the round's 2-thread run"
  print "       (bench_machine; far cores, e.g. ~365 against 70-95 ns, slow every 2-thread row)"
  print "hand = the hand-written Eigen step (no autograd, same GEMM back end); tg/hand target <= 1.05"
}
