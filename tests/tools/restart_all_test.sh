#!/usr/bin/env bash
# `chorus train --restarts R` without --min (torchrun's --max-restarts): when a worker of a
# tensor- or pipeline-parallel GPT job is killed, every worker is stopped and the job starts
# again from its newest checkpoint, and it ends where an undisturbed run ends (the same
# validation loss, to the printed digit). With the restarts spent the job fails and says so;
# --min below --nproc on such a job, and --restarts alone on a parameter-server job, are refused with what to
# use instead.
# usage: bash restart_all_test.sh BUILD_DIR SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/gpt_script_lib.sh" restart_all_test "$@"

TINY=(--set model.layers=2 --set model.embed=16 --set model.heads=2 --set model.context=16
      --set train.max_steps=12 --set train.batch_size=4 --set data.eval_windows=4 --set train.log_every=2
      --set output.checkpoint_every=4 --set output.progress=none --set data.path="$CORPUS")

for layout in "tp:--set parallel.tp=2" "pp:--set parallel.pp=2 --set parallel.schedule=1f1b --set parallel.micro_batches=2"; do
  name=${layout%%:*}
  read -r -a sets <<<"${layout#*:}"
  out=$(timeout 180 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" "${sets[@]}" \
    --set output.dir="$TMP/$name-ref" 2>&1)
  [ $? -eq 0 ] || { fail "$name: the undisturbed run failed: $out"; continue; }
  ref=$(final_loss "$TMP/$name-ref")
  # Worker 1 is killed at step 9; the newest checkpoint is step 8's.
  out=$(CHORUS_FAULT=kill:1:9 timeout 180 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" "${sets[@]}" \
    --restarts 1 --set output.dir="$TMP/$name-killed" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || ! grep -q "restarting every worker from $TMP/$name-killed/checkpoints/ckpt-00000008.pt (restart 1 of 1)" <<<"$out"; then
    fail "$name: rc $rc: $out"
    continue
  fi
  pass "$name: the killed job restarted every worker from step 8's checkpoint"
  got=$(final_loss "$TMP/$name-killed")
  [ -n "$ref" ] && [ "$got" = "$ref" ] && pass "$name: it ends where the undisturbed run ends (val_loss $got)" \
    || fail "$name: val_loss $got after the restart, $ref undisturbed"
done

# Restarts spent: the second fault (after the restart) ends the job, and the message says so.
out=$(CHORUS_FAULT=kill:1:5,kill:1:9 timeout 180 "$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" \
  --set parallel.tp=2 --restarts 1 --set output.dir="$TMP/spent" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "restart 1 of 1" <<<"$out" && grep -q "all 1 restart(s) are spent" <<<"$out" \
  && pass "restarts spent: the job fails (exit $rc) and says so" || fail "restarts spent: rc $rc: $out"

# Refused before any worker starts, with what to do instead.
out=$("$CHORUS" train "$SOURCE/configs/gpt.toml" --nproc 2 "${TINY[@]}" --set parallel.tp=2 --min 1 --restarts 1 \
  --set output.dir="$TMP/never" 2>&1)
[ $? -ne 0 ] && grep -qF -- "keeps its world size" <<<"$out" && grep -qF -- "give --min 2" <<<"$out" \
  && [ ! -e "$TMP/never" ] && pass "--min below --nproc on a tensor-parallel job is refused, saying why" \
  || fail "--min 1 with tp: $out"
out=$("$CHORUS" train --nproc 2 --set ps.servers=1 --restarts 1 --set output.dir="$TMP/never" 2>&1)
[ $? -ne 0 ] && grep -qF "ps.restarts" <<<"$out" && [ ! -e "$TMP/never" ] \
  && pass "--restarts alone on a parameter-server job is refused, pointing to ps.restarts" || fail "ps --restarts: $out"

finish
