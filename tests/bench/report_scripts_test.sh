#!/usr/bin/env bash
# The benchmark report scripts on synthetic raw outputs: a cell is the median over the
# repeats with the spread beside it, ratios are ratios of medians, a failed run is named, and
# the page names the commit it was written at.
# usage: bash report_scripts_test.sh BUILD_DIR SOURCE_DIR
set -u
SRC=${2:?usage: report_scripts_test.sh BUILD_DIR SOURCE_DIR}
command -v python3 > /dev/null || { echo "SKIP: python3 is missing"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
expect() {  # expect FILE PATTERN WHAT
  if grep -qF -- "$2" "$1"; then pass "$3"; else fail "$3: '$2' not in $1"; sed -n '1,200p' "$1"; fi
}

# --- bench/ddp/report.py: 3 repeats of mlp at 1 and 2 workers, torch and chorus over shm/tcp.
raw=$TMP/ddp
mkdir -p "$raw"
sps_torch=(1000 1300 1100)
sps_shm=(2400 2000 2200)
sps_tcp=(1500 1700 1600)
for r in 1 2 3; do
  for w in 1 2; do
    echo "python3 torch_ddp.py --world $w" > "$raw/torch-mlp-$w-r$r.cmd"
    echo 0 > "$raw/torch-mlp-$w-r$r.rc"
    echo "{\"impl\":\"torch-ddp\",\"samples_per_s\":${sps_torch[$((r - 1))]},\"test_acc\":0.86,\"test_loss\":0.4,\"peak_rss_mb_max\":400,\"train_s\":3,\"steps\":100}" \
      > "$raw/torch-mlp-$w-r$r.out"
    for t in shm tcp; do
      d=$raw/chorus_$t-mlp-$w-r$r
      mkdir -p "$d"
      [[ $t == shm ]] && v=${sps_shm[$((r - 1))]} || v=${sps_tcp[$((r - 1))]}
      echo 0 > "$d.rc"
      printf '{"event":"start"}\n{"event":"summary","world":%d,"samples_per_s":%d,"test_acc":0.87,"test_loss":0.4,"peak_rss_mb_max":390,"overlap_frac":0.5,"train_s":2,"steps":100}\n' \
        "$w" "$v" > "$d/metrics.jsonl"
    done
  done
done
# One chorus tcp run at 2 workers stopped before its summary.
printf '{"event":"start"}\n' > "$raw/chorus_tcp-mlp-2-r3/metrics.jsonl"
echo 1 > "$raw/chorus_tcp-mlp-2-r3.rc"
echo "rank 1 failed" > "$raw/chorus_tcp-mlp-2-r3.err"
python3 "$SRC/bench/ddp/report.py" --raw "$raw" --models mlp --worlds 1 2 --repeats 3 --src "$SRC" \
  --command "bash bench/ddp/run.sh build" --out "$TMP/ddp.md" 2> "$TMP/ddp.err"
rc=$?
[[ $rc -eq 1 ]] && pass "ddp report exits 1 when a run has no result" || fail "ddp report exit status $rc, expected 1"
page=$TMP/ddp.md
expect "$page" "| 1 | 2,200 (2,000–2,400) | 1,600 (1,500–1,700) | 1,100 (1,000–1,300) | 2.00x | 1.45x |" \
  "ddp: medians, spreads and ratios of medians at 1 worker"
expect "$page" "| 2 | 2,200 (2,000–2,400) | 1,600 (1,500–1,700) | 1,100 (1,000–1,300) | 2.00x | 1.45x |" \
  "ddp: the failed tcp run is left out of the 2-worker median"
expect "$page" "chorus_tcp-mlp-2-r3/metrics.jsonl: the last line is not the run summary" "ddp: the failed run is named"
expect "$page" "at commit $(git -C "$SRC" rev-parse --short HEAD 2> /dev/null || echo unknown)" "ddp: the page names the commit"
expect "$page" "gloo" "ddp: the page says which transport PyTorch used"

# --- bench/peers/report.py: 3 repeats at 2 ranks.
raw=$TMP/peers
mkdir -p "$raw"
for r in 1 2 3; do
  for impl in chorus-shm chorus-tcp openmpi gloo; do
    case $impl in chorus-shm) bw=(5.0 3.0 4.0) ;; *) bw=(2.0 1.0 3.0) ;; esac
    case $impl in openmpi) algo=mpi ;; gloo) algo=gloo ;; *) algo=ring ;; esac
    {
      echo "bytes count dtype algo time_us algbw_GBps busbw_GBps wrong"
      echo "1048576 262144 float32 $algo $((100 * r)) ${bw[$((r - 1))]} ${bw[$((r - 1))]} 0"
    } > "$raw/$impl-2-r$r.out"
    echo 0 > "$raw/$impl-2-r$r.rc"
  done
done
python3 "$SRC/bench/peers/report.py" --raw "$raw" --ranks 2 --repeat 3 --command "bash bench/peers/run.sh" \
  --src "$SRC" --out "$TMP/peers.md" 2> /dev/null
page=$TMP/peers.md
expect "$page" "| 1 MiB | 4.000 (3.00–5.00) [ring] | 2.000 (1.00–3.00) [ring] | 2.000 (1.00–3.00) | 2.000 (1.00–3.00) | 2.00 | 2.00 | 1.00 |" \
  "peers: median busbw with spread, ratios of medians"
expect "$page" "at commit" "peers: the page names the commit"

echo "$failures failed"
[[ $failures -eq 0 ]]
