#!/usr/bin/env bash
# A real SLURM test: run the smoke preset through profiles/slurm on a throw-away,
# single-node SLURM cluster on this machine (loopback only), then check that every
# non-local job was submitted to, run by and accounted by SLURM.
#
#   bash tests/slurm/run_slurm_test.sh
#
# Needs root (installs slurm-wlm and munge with apt-get if missing, runs the daemons) and
# installs snakemake-executor-plugin-slurm into .venv (snakemake and torch pinned to the
# versions already there). Everything else lives in one temp dir that is removed on exit,
# and all daemons it started are stopped on exit, also on failure or Ctrl-C.
#
# Environment:
#   SPEECHMERGE_SLURM_KEEP=1     keep the temp dir (configs, daemon logs, work dir)
#   SPEECHMERGE_SLURM_TARGETS    snakemake targets instead of the whole smoke DAG
#                                (debugging; skips the table checks)
#   SPEECHMERGE_SLURM_MEM_MB     memory cap per job (default 2000)
#   SPEECHMERGE_SLURM_CPUS       CPUs per job (default 1: two jobs at once on 2 cores)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${SPEECHMERGE_VENV:-$REPO/.venv}
PY=$VENV/bin/python
NICE=(nice -n 19)
PARTITION=debug
LOCAL_RULES=" all " # rules Snakemake runs locally (no action / `localrules`), space separated
MEM_MB=${SPEECHMERGE_SLURM_MEM_MB:-2000}
CPUS_PER_JOB=${SPEECHMERGE_SLURM_CPUS:-1}
CTLD_PORT=${SPEECHMERGE_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${SPEECHMERGE_SLURM_SLURMD_PORT:-16818}
SYS_CONF=/etc/slurm/slurm.conf

T0=$(date +%s)
WORK=""
PIDS=()
SYS_CONF_LINKED=0

log() { printf '==> [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
    printf '\nrun_slurm_test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM ERR
    if [[ -n $WORK && -n ${SLURM_CONF:-} ]] && command -v scancel >/dev/null; then
        timeout 15 scancel --quiet --full --user "$(id -un)" 2>/dev/null # this cluster only (SLURM_CONF)
    fi
    # stop in reverse start order: sampler, slurmd, slurmctld, munged
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if ((SYS_CONF_LINKED)); then
        rm -f "$SYS_CONF"
    fi
    if [[ -n $WORK ]]; then
        if ((rc != 0)) && [[ -d $WORK/log ]]; then
            for f in "$WORK"/log/slurmctld.log "$WORK"/log/slurmd.log; do
                [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
            done
        fi
        if [[ ${SPEECHMERGE_SLURM_KEEP:-0} == 1 ]]; then
            echo "kept $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    if ((rc == 0)); then
        log "PASSED (wall time $(($(date +%s) - T0)) s)"
    else
        echo "run_slurm_test.sh: FAILED after $(($(date +%s) - T0)) s (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "run_slurm_test.sh: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq "$((secs * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fail "timed out after ${secs}s waiting for $what"
}

# ---------------------------------------------------------------- 1. packages
[[ $(id -u) == 0 ]] || fail "needs root (runs slurmctld/slurmd/munged and may apt-get install)"
[[ -x $PY ]] || fail "no venv at $VENV (see README: Two commands)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${NICE[@]}" apt-get update -qq || fail "apt-get update failed"
    "${NICE[@]}" apt-get install -y -qq slurm-wlm munge >/dev/null || fail "apt-get install slurm-wlm munge failed"
fi
log "$(slurmctld -V)"

if ! "$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
    log "installing snakemake-executor-plugin-slurm into $VENV"
    pins=$(mktemp)
    "$PY" - >"$pins" <<'EOF'
from importlib.metadata import version
for dist in ("snakemake", "torch"):
    try:
        print(f"{dist}=={version(dist)}")
    except Exception:
        pass
EOF
    "${NICE[@]}" "$PY" -m pip install -q -c "$pins" "snakemake-executor-plugin-slurm>=2.8,<3" \
        || { rm -f "$pins"; fail "pip install snakemake-executor-plugin-slurm failed"; }
    "$PY" -m pip check >/dev/null || log "warning: pip check reports conflicts: $("$PY" -m pip check | head -3)"
    rm -f "$pins"
fi
log "snakemake $("$PY" -c 'from importlib.metadata import version as v; print(v("snakemake"), "| plugin", v("snakemake-executor-plugin-slurm"), "| torch", v("torch"))')"

# ---------------------------------------------------------------- 2. the cluster
WORK=$(mktemp -d /tmp/speechmerge-slurm.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK"/{munge,state,spool,log,run,profile,wd}
export SLURM_CONF=$WORK/slurm.conf

# munge: a private key, socket and daemon, so the machine's own munge (if any) is untouched.
if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$WORK/munge/munge.key" --force
else
    dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1 count=1024 status=none
fi
chmod 700 "$WORK/munge"
chmod 600 "$WORK/munge/munge.key"
MUNGE_SOCKET=$WORK/munge/munge.socket
"${NICE[@]}" munged --foreground --force --key-file="$WORK/munge/munge.key" \
    --socket="$MUNGE_SOCKET" --pid-file="$WORK/run/munged.pid" \
    --seed-file="$WORK/munge/munge.seed" --log-file="$WORK/log/munged.log" \
    >>"$WORK/log/munged.log" 2>&1 &
PIDS+=($!)
wait_for 20 "munged" bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
log "munged up (socket $MUNGE_SOCKET)"

# the node as slurmd sees it (real CPUs / RealMemory), renamed to `localhost`
NODE_HW=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ *$//')
NODE_CPUS=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$NODE_HW")
NODE_MEM=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$NODE_HW")
((MEM_MB <= NODE_MEM)) || MEM_MB=$NODE_MEM
((CPUS_PER_JOB <= NODE_CPUS)) || CPUS_PER_JOB=$NODE_CPUS
# slurmctld only accepts a SlurmctldHost naming this machine; its address is loopback.
CTLD_HOST=$(hostname -s)
JOBCOMP=$WORK/jobcomp.txt
cat >"$SLURM_CONF" <<EOF
# generated by tests/slurm/run_slurm_test.sh: a one-node test cluster on loopback
ClusterName=speechmerge-test
SlurmctldHost=${CTLD_HOST}(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/%n
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this sandbox
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# no slurmdbd (so no sacct): finished jobs are recorded by jobcomp/filetxt instead, and
# stay visible to squeue/scontrol for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost $NODE_HW State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# `srun` inside a job (the slurm-jobstep plugin) drops SLURM_* variables, SLURM_CONF
# included, and then reads the default path: point it at this cluster's config.
if [[ -L $SYS_CONF && $(readlink "$SYS_CONF") == /tmp/speechmerge-slurm.*/slurm.conf ]]; then
    rm -f "$SYS_CONF" # left over from a killed earlier run
fi
[[ -e $SYS_CONF ]] && fail "$SYS_CONF exists: this machine has a SLURM setup; not touching it"
mkdir -p "$(dirname "$SYS_CONF")"
ln -s "$SLURM_CONF" "$SYS_CONF"
SYS_CONF_LINKED=1

for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if ss -ltn 2>/dev/null | grep -q ":$port "; then fail "port $port is in use"; fi
done

"${NICE[@]}" slurmctld -D -i -f "$SLURM_CONF" >>"$WORK/log/slurmctld.out" 2>&1 &
PIDS+=($!)
wait_for 60 "slurmctld (see $WORK/log/slurmctld.log)" scontrol ping
"${NICE[@]}" slurmd -D -N localhost -f "$SLURM_CONF" >>"$WORK/log/slurmd.out" 2>&1 &
PIDS+=($!)
node_idle() { [[ $(sinfo -h -N -n localhost -o '%t' 2>/dev/null) == idle ]]; }
wait_for 90 "node localhost to be idle in sinfo" node_idle
log "cluster up: $(sinfo -h -N -o '%N %P %t cpus=%c mem=%m')"

# smoke test of the cluster itself (also fails early on munge/cred/srun problems)
probe=$(cd "$WORK" && sbatch --parsable -p "$PARTITION" -n 1 -c 1 --mem 100 -t 2 \
    -o "$WORK/log/probe.out" --wrap 'srun -n1 hostname') || fail "sbatch of a probe job failed"
probe_done() { [[ $(scontrol show job "$probe" 2>/dev/null | grep -o 'JobState=[A-Z_]*') =~ COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL ]]; }
wait_for 120 "probe job $probe" probe_done
scontrol show job "$probe" | grep -q 'JobState=COMPLETED' \
    || fail "probe job $probe did not complete: $(scontrol show job "$probe" | grep -o 'JobState=[A-Z_]* Reason=[^ ]*') $(cat "$WORK/log/probe.out" 2>/dev/null)"
log "probe job $probe COMPLETED"

# ---------------------------------------------------------------- 3. the smoke DAG via SLURM
"$PY" "$REPO/tests/slurm/make_profile.py" "$REPO/profiles/slurm/config.yaml" "$WORK/profile" \
    --partition "$PARTITION" --mem-mb "$MEM_MB" --cpus "$CPUS_PER_JOB"
# (--configfile takes several values: keep it before the options that targets may follow)
SMK=("$VENV/bin/snakemake" -s "$REPO/Snakefile" --configfile "$REPO/configs/smoke.yaml"
    --directory "$WORK/wd" --workflow-profile "$WORK/profile")
read -r -a TARGETS <<<"${SPEECHMERGE_SLURM_TARGETS:-}"

# N = jobs of the DAG minus those Snakemake runs locally
(cd "$REPO" && "${NICE[@]}" "${SMK[@]}" -n "${TARGETS[@]}") >"$WORK/dryrun.txt" 2>&1 \
    || { tail -n 30 "$WORK/dryrun.txt" >&2; fail "dry run failed"; }
N_TOTAL=0
N_REMOTE=0
while read -r rule; do
    N_TOTAL=$((N_TOTAL + 1))
    [[ $LOCAL_RULES == *" $rule "* ]] || N_REMOTE=$((N_REMOTE + 1))
done < <(sed -nE 's/^(local)?rule ([A-Za-z0-9_]+):$/\2/p' "$WORK/dryrun.txt")
((N_REMOTE > 0)) || fail "dry run planned no SLURM jobs (see $WORK/dryrun.txt)"
log "DAG: $N_TOTAL jobs, $N_REMOTE to run through SLURM"

# sample the queue during the run: evidence of jobs pending/running in SLURM
(while :; do
    squeue -h -o '%i %j %T %P %C %m' 2>/dev/null | sed "s/^/$(date +%s) /"
    sleep 3
done) >"$WORK/squeue.txt" &
PIDS+=($!)

log "running: snakemake --workflow-profile <derived from profiles/slurm> --configfile configs/smoke.yaml ${TARGETS[*]}"
t_run=$(date +%s)
rc=0
(cd "$REPO" && "${NICE[@]}" "${SMK[@]}" "${TARGETS[@]}") >"$WORK/snakemake.log" 2>&1 || rc=$?
RUN_SECONDS=$(($(date +%s) - t_run))
if ((rc != 0)); then
    tail -n 60 "$WORK/snakemake.log" >&2
    fail "snakemake through SLURM exited $rc after ${RUN_SECONDS}s (log above; SPEECHMERGE_SLURM_KEEP=1 keeps $WORK)"
fi
log "snakemake finished in ${RUN_SECONDS}s"
kill "${PIDS[-1]}" 2>/dev/null || true

# ---------------------------------------------------------------- 4. checks
RUN_ID=$(sed -nE 's/.*SLURM run ID: ([A-Za-z0-9_-]+).*/\1/p' "$WORK/snakemake.log" | head -n 1)
[[ -n $RUN_ID ]] || fail "no 'SLURM run ID' in the snakemake log: did it use the slurm executor?"
mapfile -t SUBMITTED < <(sed -nE 's/.*has been submitted with SLURM jobid ([0-9]+).*/\1/p' "$WORK/snakemake.log")
((${#SUBMITTED[@]} == N_REMOTE)) \
    || fail "snakemake log names ${#SUBMITTED[@]} SLURM job ids, expected $N_REMOTE"
ran_locally=$(sed -nE 's/^localrule ([A-Za-z0-9_]+):$/\1/p' "$WORK/snakemake.log" | sort -u | tr '\n' ' ')
for rule in $ran_locally; do
    [[ $LOCAL_RULES == *" $rule "* ]] || fail "rule $rule ran locally, not through SLURM"
done
log "snakemake log: run ID $RUN_ID, ${#SUBMITTED[@]} SLURM job ids"

# accounting: jobcomp/filetxt has one line per finished job
[[ -s $JOBCOMP ]] || fail "jobcomp file $JOBCOMP is empty or missing"
mapfile -t COMPLETED < <(grep -F "Name=$RUN_ID " "$JOBCOMP" | grep 'JobState=COMPLETED' \
    | sed -nE 's/^JobId=([0-9]+) .*/\1/p' | sort -n)
((${#COMPLETED[@]} >= N_REMOTE)) \
    || fail "jobcomp lists ${#COMPLETED[@]} COMPLETED jobs of run $RUN_ID, expected >= $N_REMOTE"
missing=$(comm -23 <(printf '%s\n' "${SUBMITTED[@]}" | sort) <(printf '%s\n' "${COMPLETED[@]}" | sort) | tr '\n' ' ')
[[ -z $missing ]] || fail "submitted jobs not COMPLETED in jobcomp: $missing"
bad=$(grep -F "Name=$RUN_ID " "$JOBCOMP" | grep -v 'JobState=COMPLETED' | sed -nE 's/^(JobId=[0-9]+) .*(JobState=[A-Z_]+).*/\1 \2/p' || true)
[[ -z $bad ]] || fail "jobs of run $RUN_ID that did not complete: $bad"
grep -F "Name=$RUN_ID " "$JOBCOMP" | grep -q -v "Partition=$PARTITION " \
    && fail "a job ran outside partition $PARTITION"
log "jobcomp: ${#COMPLETED[@]} COMPLETED jobs of run $RUN_ID in partition $PARTITION"

# the controller still knows them (MinJobAge), and the queue sampler saw them run
first=${SUBMITTED[0]}
scontrol show job "$first" | grep -q 'JobState=COMPLETED' \
    || fail "scontrol show job $first is not COMPLETED"
seen_running=$(awk -v id="$RUN_ID" '$3 == id && $4 == "RUNNING" {print $2}' "$WORK/squeue.txt" | sort -u | wc -l)
((seen_running > 0)) || fail "the squeue sampler never saw a job of run $RUN_ID RUNNING"
log "squeue saw $seen_running distinct jobs RUNNING; scontrol: job $first COMPLETED"
grep -F "Name=$RUN_ID " "$JOBCOMP" | grep -q 'gres/gpu' && fail "a job was given a GPU on a GPU-less cluster"

if ((${#TARGETS[@]} == 0)); then
    for name in table1 table2 table3 table4 table11; do
        for ext in csv md; do
            [[ -s $WORK/wd/results/tables/$name.$ext ]] || fail "missing results/tables/$name.$ext"
        done
    done
    "$PY" - "$WORK/wd/results/tables" <<'EOF' || fail "tables are not numeric"
import math, sys
from pathlib import Path
import pandas as pd
for p in sorted(Path(sys.argv[1]).glob("*.csv")):
    df = pd.read_csv(p, index_col=0)
    assert len(df) >= 3 and df.map(lambda x: isinstance(x, float) and math.isfinite(x)).all().all(), p
EOF
    log "tables: $(cd "$WORK/wd/results/tables" && ls *.csv | tr '\n' ' ')"
fi
log "smoke DAG through SLURM: $N_REMOTE jobs in ${RUN_SECONDS}s"
