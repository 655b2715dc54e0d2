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

# --- bench/model-parallel/report.py: every section on canned runs (speed: 3 repeats, one
# PyTorch run failed), and a tp=1 out-of-memory run that stopped with chorus's error.
raw=$TMP/mp
mkdir -p "$raw"
echo "address-space limit: 1536 MiB" > "$raw/machine.txt"
# chorus_mp NAME TP START_EXTRA SUMMARY_EXTRA [EVAL]: a finished chorus run of the small GPT.
chorus_mp() {
  mkdir -p "$raw/$1"
  echo 0 > "$raw/$1.rc"
  echo "chorus train bench/model-parallel/small.toml --nproc $2" > "$raw/$1.cmd"
  printf '[model]\nname = "gpt"\nlayers = 4\nheads = 4\nembed = 128\ncontext = 128\n[train]\nbatch_size = 16\nmax_steps = 5\n[data]\neval_windows = 256\n[optim]\nlr = 0.001\n' \
    > "$raw/$1/config.toml"
  {
    echo "{\"event\":\"start\",\"tp\":$2$3}"
    [[ -n ${5:-} ]] && echo "{\"event\":\"eval\",\"step\":5,\"val_loss\":2.5,\"val_bpb\":$5}"
    echo "{\"event\":\"summary\",\"steps\":5$4}"
  } > "$raw/$1/metrics.jsonl"
}
# memory: sharded bytes 8 MiB / k, replicated 1 MiB, AdamW (optimizer = 2 x params)
for k in 1 2 4; do
  sh=$((8388608 / k))
  chorus_mp "mem-tp$k" "$k" ",\"param_bytes_sharded\":$sh,\"param_bytes_replicated\":1048576,\"optimizer_bytes\":$((2 * (sh + 1048576)))" \
    ",\"peak_rss_mb_max\":$((400 + 100 / k))"
done
# out of memory: tp=1 stopped with chorus's error, tp=4 trained 2 step(s)
echo 1 > "$raw/oom-tp1.rc"
printf 'chorus train: rank 0 of 1 ran out of memory (std::bad_alloc); its peak resident memory was 900 MiB\nchorus train: rank 0 exited with status 1\n' \
  > "$raw/oom-tp1.err"
chorus_mp oom-tp4 4 "" ",\"peak_rss_mb_max\":700"
sed -i 's/"steps":5/"steps":2/' "$raw/oom-tp4/metrics.jsonl"
# communication: rank 0's tp bytes per step exactly the formula at tp=2, 2% above at tp=4
# (2 (k-1)/k x 4 x ((4 L + 2) B T E + 3 B T) with L 4, B 16, T 128, E 128: 18 B T E + 3 B T = 4724736)
chorus_mp comm-tp2 2 "" ",\"tp_bytes_per_step\":18898944,\"bytes_per_step\":18900000"
chorus_mp comm-tp4 4 "" ",\"tp_bytes_per_step\":$((28348416 * 102 / 100)),\"bytes_per_step\":1"
# speed: chorus 1 thread 5000 4000 6000 (median 5000), PyTorch 1 thread 4000 5000 (r3 failed),
# chorus 2 threads 8000 8000 8000, PyTorch 2 threads 10000 9000 11000
c1=(5000 4000 6000); t1=(4000 5000 0); c2=(8000 8000 8000); t2=(10000 9000 11000)
for r in 1 2 3; do
  chorus_mp "speed-chorus_t1-r$r" 1 "" ",\"tokens_per_s\":${c1[$((r - 1))]}"
  chorus_mp "speed-chorus_t2-r$r" 1 "" ",\"tokens_per_s\":${c2[$((r - 1))]}"
  chorus_mp "speed-chorus_tp2-r$r" 2 "" ",\"tokens_per_s\":6000"
  chorus_mp "speed-chorus_pp2-r$r" 2 "" ",\"samples_per_s\":25"
  for t in 1 2; do
    eval "v=\${t$t[$((r - 1))]}"
    echo 0 > "$raw/speed-torch_t$t-r$r.rc"
    echo "python3 gpt_torch.py --threads $t" > "$raw/speed-torch_t$t-r$r.cmd"
    echo "{\"impl\":\"torch-gpt\",\"steps\":5,\"tokens_per_s\":$v,\"val_loss\":4,\"val_bpb\":6}" > "$raw/speed-torch_t$t-r$r.out"
  done
done
echo "Traceback: killed" > "$raw/speed-torch_t1-r3.err"
# layer-wise r3 stopped: the rank's own error line is named, not the launcher's closing line
rm -rf "$raw/speed-chorus_pp2-r3"
echo 1 > "$raw/speed-chorus_pp2-r3.rc"
printf '[rank 1] chorus train: rank 1: error: pp is not wired\nchorus train: rank 1 exited with status 1\n' > "$raw/speed-chorus_pp2-r3.err"
echo 137 > "$raw/speed-torch_t1-r3.rc"
: > "$raw/speed-torch_t1-r3.out"
# bits per byte: 3.60, 3.61 and PyTorch 3.63 (all within 0.02 of each other? 0.03: no)
chorus_mp bpb-chorus_tp1 1 "" "" 3.60
chorus_mp bpb-chorus_tp2 2 "" "" 3.61
echo 0 > "$raw/bpb-torch.rc"
echo '{"impl":"torch-gpt","steps":5,"threads":2,"tokens_per_s":1,"val_loss":2.52,"val_bpb":3.63}' > "$raw/bpb-torch.out"
python3 "$SRC/bench/model-parallel/report.py" report --raw "$raw" --repeats 3 --src "$SRC" \
  --command "bash bench/model-parallel/run.sh build" --out "$TMP/mp.md" 2> "$TMP/mp.err"
rc=$?
[[ $rc -eq 1 ]] && pass "model-parallel report exits 1 when a run has no result" || fail "model-parallel report exit status $rc, expected 1"
page=$TMP/mp.md
expect "$page" "| 2 | 4.0 | 1.0 | 5.0 | 10.0 | 20.0 | 16.0 | 0.5000 | 0.5000 | 4.0 | 450 |" \
  "model-parallel: the sharded state at tp=2 is half of tp=1's, the replicated part stated"
expect "$page" "The sharded state falls as 1/tp: holds" "model-parallel: the 1/tp verdict"
expect "$page" "| tp=1 | 1 | — | — | — | \`chorus train: rank 0 of 1 ran out of memory (std::bad_alloc)" \
  "model-parallel: the out-of-memory run's exit status and error line"
expect "$page" "tp=1 fails with an out-of-memory error; tp=4 trains: holds" "model-parallel: the out-of-memory verdict"
expect "$page" "| 2 | 16 | 128 | 128 | 4 | 5 | 18,898,944 | tp_bytes_per_step | 18,898,944 | 1.0000 | yes |" \
  "model-parallel: tp=2 bytes per step equal the formula"
expect "$page" "| 4 | 16 | 128 | 128 | 4 | 5 | 28,915,384 | tp_bytes_per_step | 28,348,416 | 1.0200 | no |" \
  "model-parallel: a 2% gap at tp=4 is shown"
expect "$page" "| chorus tp=1, 1 worker x 1 thread | 5,000 (4,000–6,000) | 1.11x |" \
  "model-parallel: chorus against the PyTorch median of the two runs that finished"
expect "$page" "| chorus layer-wise pp=2, 2 workers x 1 thread | 3,200 (3,200–3,200) | 0.32x |" \
  "model-parallel: tokens/s from samples/s x context when the summary lacks tokens_per_s"
expect "$page" "speed-torch_t1-r3.out has no result line (exit status 137" "model-parallel: the failed run is named"
expect "$page" "speed-chorus_pp2-r3/metrics.jsonl does not exist (exit status 1: [rank 1] chorus train: rank 1: error: pp is not wired)" \
  "model-parallel: a failed chorus run is named with its rank's error line"
expect "$page" "| PyTorch eager (1 process x 2 thread(s)) | 5 | 2.5200 | 3.6300 | +0.0300 |" "model-parallel: bits per byte against chorus tp=1"
expect "$page" "largest difference 0.0300): does not hold" "model-parallel: the 0.02 verdict"
expect "$page" "at commit $(git -C "$SRC" rev-parse --short HEAD 2> /dev/null || echo unknown)" "model-parallel: the page names the commit"

# --- bench/hosts/report.py, the parameter-server section: 3 rounds of dense and top-k pushes;
# top-k's third round stopped before worker 0's summary.
raw=$TMP/hosts
# ps_run NAME SAMPLES_PER_S PUSH_S ACC: worker 0's summary (2 workers, 10 steps) and one eval.
ps_run() {
  mkdir -p "$raw/$1/ps"
  echo 0 > "$raw/$1.rc"
  printf '{"event":"start"}\n{"event":"eval","test_acc":%s,"train_s":1,"bytes_sent":0}\n{"event":"summary"}\n' "$4" \
    > "$raw/$1/metrics.jsonl"
  printf '{"event":"summary","workers":2,"steps":10,"samples_per_s":%s,"push_s":%s,"pull_s":2,"bytes_pushed":1000000,"train_s":5}\n' \
    "$2" "$3" > "$raw/$1/ps/worker0.jsonl"
}
ps_run ps-dense-r1 100 2 0.80
ps_run ps-dense-r2 120 2 0.81
ps_run ps-dense-r3 110 2 0.82
ps_run ps-topk-r1 150 0.1 0.79
ps_run ps-topk-r2 180 0.1 0.80
mkdir -p "$raw/ps-topk-r3/ps"
echo 1 > "$raw/ps-topk-r3.rc"
python3 "$SRC/bench/hosts/report.py" --raw "$raw" --sizes 4K --ps-repeat 3 --ps-methods dense topk --ps-limit 640 \
  --ps-epochs 1 --src "$SRC" --command "bash bench/hosts/run.sh build" --out "$TMP/hosts.md" 2> "$TMP/hosts.err"
page=$TMP/hosts.md
# throughput = 2 workers x worker 0's rate; vs dense = per-round ratios 300/200 and 360/240
expect "$page" "| dense float32 | 220 (200–240) | 1 | 0.200 (0.200–0.200) | 0.200 (0.200–0.200) | 100.00 kB (100.00 kB–100.00 kB) | 0.8100 (0.8000–0.8200) |" \
  "hosts: the dense row, medians and spreads"
expect "$page" "| top-k 1% | 330 (300–360) | 1.50x (1.50x–1.50x) | 0.010 (0.010–0.010) |" "hosts: top-k against the same round's dense"
expect "$page" "ps-topk-r3: no worker 0 record" "hosts: the failed round is named"

# --- bench/chaos/report.py: time lost from the fault's timestamp to the step after it, the
# PyTorch driver's JSON, the ratio and the 10x target; a chaos run that hung is counted; the
# injected checkpoint kills of the main job; the parameter-server runs (faults per mode, hangs,
# shard checksums verified, ckpt kills, steps lost per failure and done twice, accuracy).
raw=$TMP/chaos
mkdir -p "$raw"
# chaos_lost NAME KILL_UNIX STEP26_UNIX: a chorus run whose worker was killed at step 25.
chaos_lost() {
  mkdir -p "$raw/$1"
  echo "[rank 2] chorus train: worker 2 (pid 9): CHORUS_FAULT kills it at step 25 (unix time $2)" > "$raw/$1.err"
  printf '{"event":"step","step":26,"unix_s":%s}\n{"event":"step","step":26,"unix_s":%s}\n' "$(($2 - 5))" "$3" \
    > "$raw/$1/metrics.jsonl"
}
for r in 1 2 3; do
  chaos_lost "lost-elastic-r$r" 1000 "100$r"            # 1, 2, 3 s
  chaos_lost "lost-elastic-replace-r$r" 1000 1004
  chaos_lost "lost-elastic-spare-r$r" 1000 1002
  chaos_lost "lost-chorus-restart-r$r" 1000 1006
  cp "$raw/lost-chorus-restart-r$r.err" "$raw/lost-chorus-restart-r$r-a.err"
  echo "{\"impl\": \"torch-restart-all\", \"lost_s\": $((20 + r))}" > "$raw/lost-torch-restart-r$r.out"
done
mkdir -p "$raw/chaos-1" "$raw/chaos-2"
echo 0 > "$raw/chaos-1.rc"; echo ok > "$raw/chaos-1.ckpt"
echo 124 > "$raw/chaos-2.rc"; echo "unreadable: none" > "$raw/chaos-2.ckpt"
# chaos-1 is a ckpt run: inject.py killed rank 0 inside its write; the checkpoint kept aside loads.
echo '{"faults": [{"kind": "ckpt", "rank": 0, "signal": "SIGKILL", "landed": true, "tmp": "x/checkpoints/ckpt-00000010.pt.tmp.42"}]}' \
  > "$raw/chaos-1.inject.json"
echo "ok chaos-1.prev-1.pt" > "$raw/chaos-1.prev"
# Parameter-server runs: undisturbed runs per mode; ps-1 (bsp) finished, 4 faults, one a ckpt
# kill of server 0 that landed, server 1 never restarted (it counts worker 0 90 of 100 pushes
# after 2 failures: 5 lost per failure; worker 1 97 after 1: 3); ps-2 (asp) finished, both
# servers restarted, worker 2 (2 failures) logged steps 1-37 then 8-100 again: 30 done twice,
# none lost (from its log); ps-3 (ssp) timed out after 2 faults, one of its shards damaged.
shard() {  # shard FILE [broken]: a CPSCKPT2 file (magic, SHA-256 of the body, body)
  python3 -c "import hashlib,sys; b=bytes(range(256))*40; d=hashlib.sha256(b).digest()
if len(sys.argv) > 2: b = b[:100] + bytes([b[100] ^ 1]) + b[101:]
open(sys.argv[1], 'wb').write(b'CPSCKPT2' + d + b)" "$@"
}
ps_server() {  # ps_server RUN S RESTART RESUMED W0 W1 W2: the server's report
  echo "{\"version\": 100, \"restart\": $3, \"resumed\": $4, \"w0_pushes\": $5, \"w1_pushes\": $6, \"w2_pushes\": $7}" \
    > "$raw/$1/ps/server$2.json"
}
ps_steps() {  # ps_steps RUN W FIRST LAST: step records FIRST..LAST appended to worker W's log
  for i in $(seq "$3" "$4"); do echo "{\"event\": \"step\", \"step\": $i}"; done >> "$raw/$1/ps/worker$2.jsonl"
}
ps_acc() {  # ps_acc RUN ACC: worker 0's start and final eval records
  printf '{"event": "start", "total_steps": 100, "steps_per_epoch": 50}\n{"event": "eval", "epoch": 1, "test_acc": %s}\n' \
    "$2" > "$raw/$1/metrics.jsonl"
}
for m in bsp:0.8200 asp:0.8100 ssp:0.8150; do
  mkdir -p "$raw/ps-clean-${m%%:*}-r1"; echo 0 > "$raw/ps-clean-${m%%:*}-r1.rc"; ps_acc "ps-clean-${m%%:*}-r1" "${m#*:}"
done
for s in 1 2 3; do mkdir -p "$raw/ps-$s/ps"; done
echo bsp > "$raw/ps-1.mode"; echo asp > "$raw/ps-2.mode"; echo ssp > "$raw/ps-3.mode"
echo 0 > "$raw/ps-1.rc"; echo 0 > "$raw/ps-2.rc"; echo 124 > "$raw/ps-3.rc"
ps_acc ps-1 0.8180; ps_acc ps-2 0.8000
shard "$raw/ps-1/ps/server0.ckpt"; shard "$raw/ps-1/ps/server1.ckpt"; shard "$raw/ps-1.prev-3.ckpt"
shard "$raw/ps-2/ps/server0.ckpt"; shard "$raw/ps-2/ps/server1.ckpt"
shard "$raw/ps-3/ps/server0.ckpt"; shard "$raw/ps-3/ps/server1.ckpt" broken
ps_server ps-1 0 1 true 60 60 60; ps_server ps-1 1 0 false 90 97 100
ps_server ps-2 0 1 true 50 50 70; ps_server ps-2 1 1 true 40 40 60
for w in 0 1 2; do ps_steps ps-1 $w 1 100; done
ps_steps ps-2 0 1 100; ps_steps ps-2 1 1 100; ps_steps ps-2 2 1 37; ps_steps ps-2 2 8 100
cat > "$raw/ps-1.inject.json" << EOF
{"faults": [{"kind": "kill", "rank": 0, "signal": "SIGKILL"}, {"kind": "stop", "rank": 1, "signal": "SIGSTOP"},
 {"kind": "ckpt", "rank": 3, "signal": "SIGKILL", "landed": true, "tmp": "$raw/ps-1/ps/server0.ckpt.tmp.77",
  "prev": "$raw/ps-1/ps/server0.ckpt", "prev_copy": "$raw/ps-1.prev-3.ckpt", "prev_in_place": true},
 {"kind": "stop", "rank": 0, "signal": "SIGSTOP"}]}
EOF
echo '{"faults": [{"kind": "kill", "rank": 3, "signal": "SIGKILL"}, {"kind": "kill", "rank": 4, "signal": "SIGKILL"},
 {"kind": "kill", "rank": 2, "signal": "SIGKILL"}, {"kind": "stop", "rank": 2, "signal": "SIGSTOP"}]}' > "$raw/ps-2.inject.json"
# ps-3's ckpt kill came after the write had finished (not landed): the new shard replaced the
# kept one, which is no fault of the old shard's (the final-shard check covers the new one).
cat > "$raw/ps-3.inject.json" << EOF
{"faults": [{"kind": "kill", "rank": 1, "signal": "SIGKILL"}, {"kind": "stop", "rank": 4, "signal": "SIGSTOP"},
 {"kind": "ckpt", "rank": 3, "signal": "SIGKILL", "landed": false, "tmp": "$raw/ps-3/ps/server0.ckpt.tmp.78",
  "prev": "$raw/ps-3/ps/server0.ckpt", "prev_copy": "$raw/ps-3.prev-3.ckpt", "prev_in_place": false}]}
EOF
python3 "$SRC/bench/chaos/report.py" --raw "$raw" --lost-repeat 3 --sections lost chaos ps --chaos-runs 2 --ps-runs 3 \
  --ps-clean 1 --src "$SRC" --command "bash bench/chaos/run.sh build" --out "$TMP/chaos.md" 2> "$TMP/chaos.err"
page=$TMP/chaos.md
expect "$page" "| chorus elastic (--min 2): 3 survivors go on | 2.00 (1.00–3.00) | 1.0x |" "chaos: elastic's time lost, median and spread"
expect "$page" "| PyTorch DDP, torchrun's restart-all (torch_restart.py) | 22.00 (21.00–23.00) | 11.0x |" \
  "chaos: the driver's lost_s and the ratio to elastic"
expect "$page" "restart-all (elastic): **met** (PyTorch restart-all / chorus elastic = 11.0x)" "chaos: the 10x target met"
expect "$page" "restart-all (elastic-replace): **not met** (PyTorch restart-all / chorus elastic-replace = 5.5x)" \
  "chaos: the 10x target not met"
expect "$page" "restart-all (elastic-spare): **met** (PyTorch restart-all / chorus elastic-spare = 11.0x)" \
  "chaos: the spare's row and its target"
expect "$page" "| hangs (no exit within 300 s) | 1 |" "chaos: a run that timed out is a hang"
expect "$page" "| jobs finished | 1 of 2 |" "chaos: finished jobs"
expect "$page" "| kills of rank 0 while it wrote a checkpoint (injected) | 1 in 1 runs |" "chaos: the injected checkpoint kill"
expect "$page" "| checkpoint in place at such a kill that still loads | 1 of 1 |" "chaos: the checkpoint kept aside loads"
expect "$page" "| bsp | 1 | 4 (1 / 2 / 1) | 1 | 0 | 0 |" "chaos ps: the bsp run's faults and outcome"
expect "$page" "| ssp | 1 | 3 (1 / 1 / 1) | 0 | 0 | 1 |" "chaos ps: a run that timed out is a hang"
expect "$page" "| unreadable final shard checkpoints (CPSCKPT magic and SHA-256 checked here) | 1 of 6 |" \
  "chaos ps: a shard whose SHA-256 does not match is unreadable"
expect "$page" "ps-3/ps/server1.ckpt: unreadable: its SHA-256 does not match its body" "chaos ps: the damaged shard is named"
expect "$page" "| of those, landed inside the write (temporary left behind) | 1 |" "chaos ps: the ckpt kill landed"
expect "$page" "| shard in place at the kill still whole (magic, SHA-256) | 1 of 1 |" "chaos ps: the kept shard verifies"
expect "$page" "| killed server restarted and reloaded its shard (\`resumed\`) | 1 of 2 |" "chaos ps: the killed server reloaded"
! grep -q "replaced while the writer" "$page" && pass "chaos ps: a kill after the write finished is not a damaged shard" \
  || fail "chaos ps: a finished write counted as damage: $(grep "replaced while" "$page")"
expect "$page" "| steps lost per worker failure, median (min–max) | 3.0 (0.0–5.0) |" \
  "chaos ps: steps lost per failure from the never-restarted server, else the worker's log"
expect "$page" "| of the worker failures, measured from the worker's log (both servers restarted) | 2 |" \
  "chaos ps: failures measured from the log"
expect "$page" "| steps done twice by a worker (its log, its servers' counts) | 30 |" "chaos ps: repeated steps counted"
expect "$page" "ps-2 (asp): worker 2 did 30 step(s) twice (steps 8-37 in ps/worker2.jsonl)" "chaos ps: the repeats are named"
expect "$page" "| bsp | 0.8200 (0.8200–0.8200, 1 run) | -0.20 | -0.20–-0.20 |" "chaos ps: accuracy against the mode's undisturbed run"
expect "$page" "within 0.5 point of undisturbed (mean per mode): **not met** (largest mean difference 1.00 point; single runs below −0.5: asp -1.00)" \
  "chaos ps: the accuracy target, not met"
expect "$page" "- Target: no hangs: **not met** (1)." "chaos ps: the hang target"
expect "$page" "ps-3: 3 of 4 faults delivered" "chaos ps: a run with fewer faults is named"
expect "$page" "Failures injected in all: 12 (1 in the data-parallel runs, 11 in the parameter-server runs)" \
  "chaos: faults counted over both kinds of job"

# The mp page: tensor- and pipeline-parallel time lost, in place against restart-all, per layout;
# a run without its step 26 is named.
raw=$TMP/chaos-mp
mkdir -p "$raw"
for r in 1 2 3; do
  chaos_lost "mp-tp-replace-r$r" 1000 "100$r"   # 1, 2, 3 s
  chaos_lost "mp-tp-spare-r$r" 1000 1001
  chaos_lost "mp-tp-restart-r$r" 1000 1010
  chaos_lost "mp-pp-replace-r$r" 1000 1002
  chaos_lost "mp-pp-spare-r$r" 1000 "100$((2 * r - 1))"   # 1, 3, (5: its metrics are emptied below)
  chaos_lost "mp-pp-restart-r$r" 1000 "101$r"   # 11, 12, 13 s
  for m in replace spare restart; do chaos_lost "mp-tp1-$m-r$r" 1000 1004; done
  # Undisturbed tp 2 runs at dp 1: 0.5 s per step plain, 0.6 with the copies (steps 1 to 11).
  mkdir -p "$raw/mp-tp1-plain-r$r" "$raw/mp-tp1-copies-r$r"
  printf '{"event":"step","step":1,"unix_s":100}\n{"event":"step","step":11,"unix_s":105}\n' > "$raw/mp-tp1-plain-r$r/metrics.jsonl"
  printf '{"event":"step","step":1,"unix_s":100}\n{"event":"step","step":11,"unix_s":106}\n' > "$raw/mp-tp1-copies-r$r/metrics.jsonl"
done
: > "$raw/mp-pp-spare-r3/metrics.jsonl"
python3 "$SRC/bench/chaos/report.py" --raw "$raw" --mp-repeat 3 --sections mp --src "$SRC" \
  --command "SECTIONS=mp bash bench/chaos/run.sh build" --out "$TMP/chaos-mp.md" 2> "$TMP/chaos-mp.err"
page=$TMP/chaos-mp.md
expect "$page" "# Fault tolerance of tensor- and pipeline-parallel jobs: time lost per failure" "chaos mp: its own title"
expect "$page" "| tp 2 x dp 2 | chorus elastic in place, --min N --restarts 1: a new process takes the place | 2.00 (1.00–3.00) | 5.0x |" \
  "chaos mp: tp in place, median, spread and the ratio to restart-all"
expect "$page" "| pp 2 (1F1B, 4 micro-batches) x dp 2 | chorus restart-all, --restarts 1 without --min (torchrun's strategy) | 12.00 (11.00–13.00) | 1.0x |" \
  "chaos mp: pp restart-all"
expect "$page" "| pp 2 (1F1B, 4 micro-batches) x dp 2 | chorus elastic in place, --spares 1: a waiting spare takes the place | 2.00 (1.00–3.00) | 6.0x |" \
  "chaos mp: a run without a result is left out of the median"
expect "$page" "mp-pp-spare-r3: no step 26 completed after the kill" "chaos mp: the run without a result is named"
expect "$page" "| elastic, with the copies | 0.600 (0.600–0.600) | 1.20x |" "chaos mp: the copies' cost per step at dp 1"
! grep -q "Fashion-MNIST" "$page" && pass "chaos mp: no MLP job description on the mp page" \
  || fail "chaos mp: the MLP paragraph is on the mp page"

# --- bench/pipeline/timeline.py: the bubble of a traced step, and the same step replayed with free
# transfers. GPipe, 2 stages, 2 micro-batches, forward 10 ms, backward 20 ms, every transfer 5 ms:
# the trace's span is 100 ms (bubble 0.4 on each stage); replayed it is 90 ms, the formula's
# (p - 1)/(m + p - 1) = 1/3. Then interleaved, 2 ranks of 2 model chunks, no transfer time: the
# replay infers each action's chunk from its occurrence and reproduces the trace (150 ms, 0.2).
pipe_trace() {  # pipe_trace OUT "stage:name:micro_batch:start_ms:dur_ms ..." (steps 1 and 2, 1 s apart)
  python3 - "$@" <<'PY'
import json, sys
out, spans = sys.argv[1], sys.argv[2].split()
names = {"F": "forward", "B": "backward", "w": "wait activation"}
ev = []
for step in (1, 2):
    for sp in spans:
        st, kind, mb, start, dur = sp.split(":")
        ev.append({"ph": "X", "pid": int(st), "tid": 0, "name": names[kind], "ts": (1000 * step + float(start)) * 1000,
                   "dur": float(dur) * 1000, "args": {"step": step, "stage": int(st), "micro_batch": int(mb)}})
json.dump({"traceEvents": ev}, open(out, "w"))
PY
}
pipe_trace "$TMP/gpipe.json" "0:F:0:0:10 0:F:1:10:10 1:w:0:0:15 1:F:0:15:10 1:F:1:25:10 1:B:0:35:20 1:B:1:55:20 \
  0:w:0:20:40 0:B:0:60:20 0:B:1:80:20"
out=$(python3 "$SRC/bench/pipeline/timeline.py" "$TMP/gpipe.json" --last 2)
python3 -c 'import json, sys; j = json.loads(sys.argv[1]); sys.exit(0 if j["bubble"] == [0.4, 0.4] and j["replay"] == [0.3333, 0.3333] else 1)' "$out" \
  && pass "timeline: the traced bubble counts the transfers, the replay does not" || fail "timeline gpipe: $out"
pipe_trace "$TMP/interleaved.json" "0:F:0:0:10 0:F:1:10:10 0:F:0:20:10 0:F:1:30:10 0:B:0:70:20 0:B:1:90:20 0:B:0:110:20 0:B:1:130:20 \
  1:F:0:10:10 1:F:1:20:10 1:F:0:30:10 1:F:1:40:10 1:B:0:50:20 1:B:1:70:20 1:B:0:90:20 1:B:1:110:20"
out=$(python3 "$SRC/bench/pipeline/timeline.py" "$TMP/interleaved.json" --last 2)
python3 -c 'import json, sys; j = json.loads(sys.argv[1]); sys.exit(0 if j["bubble"] == [0.2, 0.2] and j["replay"] == [0.2, 0.2] else 1)' "$out" \
  && pass "timeline: an interleaved step replays to its own trace" || fail "timeline interleaved: $out"
# A backward whose gradient never comes (its micro-batch has no backward on the next stage):
# nothing to replay, so no "replay" key rather than a wrong number.
pipe_trace "$TMP/broken.json" "0:F:0:0:10 1:F:0:10:10 0:B:0:40:20"
out=$(python3 "$SRC/bench/pipeline/timeline.py" "$TMP/broken.json" --last 2)
python3 -c 'import json, sys; sys.exit("replay" in json.loads(sys.argv[1]))' "$out" \
  && pass "timeline: an unreplayable step has no replay" || fail "timeline broken: $out"

echo "$failures failed"
[[ $failures -eq 0 ]]
