#!/usr/bin/env bash
# deploy/kubernetes/chorus-job.yaml, run as Kubernetes would run it, on netlab hosts (there is
# no cluster here). The manifest is read, not copied: its Indexed Job's pod count, hostnames
# (<job>-<index>) and subdomain, its container's command, environment and mounts.
# - The manifest's shape: a headless Service that publishes not-ready addresses and selects
#   the Job's pods, the Job Indexed with completions = parallelism = --nnodes, the pods'
#   subdomain naming the Service, and --rdzv-endpoint naming pod 0 under it.
# - Each netlab host is one pod: a clean environment with the container's variables, the
#   secret's value where the manifest takes it from the Secret, JOB_COMPLETION_INDEX as the
#   Job controller sets it, and each volume mount a directory of the pod's own (a ConfigMap's
#   keys as files). The pods' DNS names (chorus-K.chorus) appear 2 s after the pods start, as
#   a cluster DNS may publish them late: node 0 waits for its own name, the others retry.
#   The command trains (shortened with --set) and pod 0 writes the summary of a 4-worker job.
# - The same pods started as Kubeflow's trainer starts torchrun's, with PET_NNODES,
#   PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT and PET_NPROC_PER_NODE and a bare
#   `chorus launch -- PROGRAM`: the benchmark runs on 4 ranks and every row is exact.
# Skipped (exit 77) without root or network namespaces. The lab is removed on every way out.
# usage: bash k8s_test.sh BUILD_DIR SOURCE_DIR
set -u
BUILD=${1:?usage: k8s_test.sh BUILD_DIR SOURCE_DIR}
SRC=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
NETLAB=$SRC/tools/netlab/netlab.sh
MANIFEST=$SRC/deploy/kubernetes/chorus-job.yaml
CHORUS=$(realpath -m "$BUILD/chorus")
PY=/usr/bin/python3
LAB=k8s$$

"$NETLAB" usable || exit 77
[ -x "$CHORUS" ] || { echo "FAIL: $CHORUS is not built (build the chorus target)"; exit 1; }
"$PY" -c 'import yaml' 2>/dev/null || { echo "FAIL: python3-yaml is not installed (make test's bootstrap installs it)"; exit 1; }

TMP=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null  # a name publisher still sleeping
  "$NETLAB" down "$LAB" >/dev/null 2>&1
  [ -n "${KEEP:-}" ] || rm -rf "$TMP"; [ -n "${KEEP:-}" ] && echo "kept $TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# Reads the manifest; checks its shape; writes, per pod K, $TMP/podK/run.sh: the container's
# command in the pod's environment, with every mount path mapped to the pod's own directory.
# Prints "PODS JOB SUBDOMAIN".
read -r PODS JOB SUBDOMAIN < <("$PY" - "$MANIFEST" "$TMP" "$(dirname "$CHORUS")" <<'EOF'
import os, shlex, sys, yaml
manifest, tmp, bindir = sys.argv[1:4]
objects = [d for d in yaml.safe_load_all(open(manifest)) if d]
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)
def one(kind):
    found = [d for d in objects if d["kind"] == kind]
    return found[0] if len(found) == 1 else None
svc, job = one("Service"), one("Job")
cms = [d for d in objects if d["kind"] == "ConfigMap"]
need(svc is not None and job is not None, "a Service and a Job")
if problems:
    sys.exit("manifest: " + "; ".join(problems))
spec, pod = job["spec"], job["spec"]["template"]["spec"]
name = job["metadata"]["name"]
need(spec.get("completionMode") == "Indexed", "the Job's completionMode is Indexed")
n = spec.get("completions")
need(isinstance(n, int) and n >= 2 and spec.get("parallelism") == n, "completions = parallelism >= 2")
need(svc["spec"].get("clusterIP") == "None", "the Service is headless (clusterIP: None)")
need(svc["spec"].get("publishNotReadyAddresses") is True, "the Service publishes not-ready addresses")
need(svc["spec"].get("selector") == {"job-name": name}, f"the Service selects job-name: {name}")
need(pod.get("subdomain") == svc["metadata"]["name"], "the pods' subdomain is the Service's name")
need(pod.get("restartPolicy") == "Never", "restartPolicy Never")
(c,) = pod["containers"]
argv = list(c.get("command", [])) + list(c.get("args", []))
def flag(f):
    return argv[argv.index(f) + 1] if f in argv else None
need(argv[:2] == ["chorus", "launch"], "the container runs chorus launch")
need(flag("--nnodes") == str(n), f"--nnodes {n}, one node per pod")
need((flag("--rdzv-endpoint") or "").rsplit(":", 1)[0] == f"{name}-0.{pod.get('subdomain')}",
     f"--rdzv-endpoint names pod 0: {name}-0.{pod.get('subdomain')}")
need("--node-rank" not in argv, "no --node-rank: each pod takes JOB_COMPLETION_INDEX")
if problems:
    sys.exit("manifest: " + "; ".join(problems))
volumes = {v["name"]: v for v in pod.get("volumes", [])}
configmaps = {m["metadata"]["name"]: m for m in cms}
for k in range(n):
    root = os.path.join(tmp, f"pod{k}")
    mapped = {}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        d = os.path.join(root, "mnt", m["name"])
        os.makedirs(d, exist_ok=True)
        if "configMap" in v:
            for key, text in configmaps[v["configMap"]["name"]]["data"].items():
                with open(os.path.join(d, key), "w") as f:
                    f.write(text)
        if m["mountPath"] != "/dev/shm":  # the machine's own /dev/shm stands in for the Memory volume
            mapped[m["mountPath"]] = d
    def place(s):
        for mp, d in mapped.items():
            s = s.replace(mp + "/", d + "/") if s != mp else d
        return s
    # ConfigMap files that name other mounts (train.toml's output dir) see them too.
    for m in c.get("volumeMounts", []):
        if "configMap" in volumes[m["name"]]:
            d = mapped[m["mountPath"]]
            for key in os.listdir(d):
                p = os.path.join(d, key)
                text = open(p).read()
                open(p, "w").write(place(text))
    env = {"PATH": bindir + ":/usr/bin:/bin", "HOME": root, "JOB_COMPLETION_INDEX": str(k), "HOSTNAME": f"{name}-{k}"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = "k8s-test-secret-" + os.path.basename(tmp)
    with open(os.path.join(root, "run.sh"), "w") as f:
        f.write("cd " + shlex.quote(root) + "\n")
        f.write("exec env -i " + " ".join(shlex.quote(f"{a}={b}") for a, b in env.items()) + " "
                + " ".join(shlex.quote(place(a)) for a in argv) + ' "$@"\n')
    with open(os.path.join(root, "output"), "w") as f:
        f.write(mapped.get("/output", "") + "\n")
print(n, name, pod["subdomain"])
EOF
)
if [ -z "${PODS:-}" ]; then
  echo "FAIL: the manifest $MANIFEST does not have the expected shape (above)"
  exit 1
fi
pass "the manifest: a headless Service publishing not-ready addresses, an Indexed Job of $PODS pods in subdomain $SUBDOMAIN, --nnodes $PODS, pod 0 as the endpoint"

"$NETLAB" up "$PODS" --rate 1gbit --name "$LAB" >/dev/null || { echo "FAIL: netlab up"; exit 1; }

# The pods' DNS names, published 2 s after the pods start (every lab host shares one hosts file).
publish_names() {
  sleep 2
  for ((k = 0; k < PODS; k++)); do echo "10.77.0.$((k + 1)) $JOB-$k.$SUBDOMAIN"; done >>"/run/netlab/$LAB/hosts"
}
# Rewritten in place: the hosts see the file through bind mounts of its inode.
unpublish_names() {
  local f=/run/netlab/$LAB/hosts
  grep -v " $JOB-[0-9]*\.$SUBDOMAIN\$" "$f" >"$TMP/hosts.new"
  cat "$TMP/hosts.new" >"$f"
}

# 1. The manifest's command, shortened with --set, on one pod per host.
publish_names &
timeout 300 "$NETLAB" exec-all "$LAB" -- sh -c "exec sh '$TMP/pod'\$GROUP_RANK'/run.sh' --set data.limit_train=512 \
  --set data.limit_test=256 --set train.epochs=1 --set train.batch_size=64 --set train.threads=1 \
  --set model.hidden=[32] --set output.progress=lines --set output.checkpoint_epoch=false" >"$TMP/job.out" 2>&1
rc=$?
wait
out0=$(head -1 "$TMP/pod0/output")
metrics=$(find "$out0" -name metrics.jsonl 2>/dev/null | head -1)
if [ $rc -eq 0 ] && [ -n "$metrics" ] && grep -q '"event": "start", "world": 4,' "$metrics" &&
  grep -q '"event": "summary"' "$metrics"; then
  pass "the Job's command on $PODS pods: 4 workers trained, pod 0 wrote the summary to its /output"
else
  fail "the Job's command: exit $rc, metrics '${metrics:-none}'"
  tail -30 "$TMP/job.out"
fi
grep -q "from the environment: --node-rank 1 (JOB_COMPLETION_INDEX)" "$TMP/job.out" &&
  pass "pod 1 took its node rank from JOB_COMPLETION_INDEX" ||
  fail "pod 1 did not say it took --node-rank from JOB_COMPLETION_INDEX"
grep -q "waiting for node 0's rendezvous host '$JOB-0.$SUBDOMAIN' to resolve" "$TMP/job.out" &&
  pass "node 0 waited for its DNS name ($JOB-0.$SUBDOMAIN) to appear" ||
  fail "node 0 did not wait for its DNS name (the names appear 2 s late)"

# 2. Kubeflow's trainer: the PET_* variables and a bare `chorus launch -- PROGRAM`.
unpublish_names
publish_names &
timeout 180 "$NETLAB" exec-all "$LAB" -- sh -c "exec env -i PATH='$(dirname "$CHORUS")':/usr/bin:/bin \
  CHORUS_JOB_SECRET=kubeflow-$$ PET_NNODES=$PODS PET_NODE_RANK=\$GROUP_RANK PET_MASTER_ADDR=$JOB-0.$SUBDOMAIN \
  PET_MASTER_PORT=29500 PET_NPROC_PER_NODE=2 chorus launch -- chorus bench collectives --op allreduce \
  --min-bytes 4K --max-bytes 1M --step-factor 16 --iters 3 --warmup 1" >"$TMP/pet.out" 2>&1
rc=$?
wait
rows=$(grep -E '^\[h0\] \[rank 0\] +[0-9]+ ' "$TMP/pet.out" | sed 's/^\[h0\] \[rank 0\]//')
if [ $rc -eq 0 ] && [ "$(echo "$rows" | wc -l)" -eq 3 ] && ! echo "$rows" | awk '$NF != 0 { bad = 1 } END { exit !bad }' &&
  grep -q "$((PODS * 2)) ranks" "$TMP/pet.out"; then
  pass "Kubeflow's PET_* variables and a bare chorus launch: $((PODS * 2)) ranks, every row wrong = 0"
else
  fail "PET_* launch: exit $rc"
  tail -30 "$TMP/pet.out"
fi
grep -q "waiting for node 0's rendezvous host '$JOB-0.$SUBDOMAIN' to resolve" "$TMP/pet.out" ||
  fail "with PET_*, node 0 did not wait for its DNS name (published 2 s late)"

if [ $failures -ne 0 ]; then
  echo "k8s_test: $failures FAILED"
  exit 1
fi
echo "k8s_test: all passed"
