#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/e2e/test_slurm.py (`make test-cluster`):
# munged, MariaDB + slurmdbd (accounting, so `sacct` answers), slurmctld and slurmd on localhost,
# the node in two partitions (`cpu`, the default, and `gpu`, the names workflow/profiles/slurm
# uses) with one fake GPU declared as gres `gpu:a100:1` (its device file is /dev/null: the jobs run on
# the CPU) so the profile's `gpu: 1` / `gpu_model: a100` requests schedule.
#
# Needs root and Debian's packages: installs slurm-wlm, slurmdbd, munge and mariadb-server with
# apt-get when they are missing. Idempotent: a second run finds the daemons up and says so.
# Exit status 0: the cluster answers (`sinfo` shows the node idle); 3: it cannot be brought up here
# (not root, no apt-get), with the reason on stderr; anything else: a failure, with the logs' tails.
# tests/cluster/slurm-down.sh stops it.
set -euo pipefail

CLUSTER=tokenbench
MARK="# written by tokenbench tests/cluster/slurm-up.sh"
CONF=/etc/slurm
LOGDIR=/var/log/slurm
STATE=/var/lib/slurm
NODE=$(hostname -s)
# The node's declared size. SlurmdParameters=config_overrides makes slurmd accept a node smaller
# than declared: the profile's load test asks for 8 CPUs and 64 GB, more than a 2-core test machine
# has; what is declared here only has to let those requests schedule.
CPUS=$(( $(nproc) > 8 ? $(nproc) : 8 ))
MEM_MB=66000

say() { echo "slurm-up: $*" >&2; }
cannot() { say "cannot bring up a SLURM cluster here: $*"; exit 3; }

[ "$(id -u)" = 0 ] || cannot "not root (the daemons and /etc/slurm need root)"

need_install=()
for bin in slurmctld:slurmctld slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client \
           munged:munge mariadbd:mariadb-server; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || need_install+=("${bin#*:}")
done
if [ ${#need_install[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || cannot "no apt-get to install ${need_install[*]}"
    say "installing ${need_install[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the init scripts are not started by the package (no init system in a container); we start them
    apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client slurmdbd munge mariadb-server \
        >/dev/null
fi

if [ -f "$CONF/slurm.conf" ] && ! grep -qF "$MARK" "$CONF/slurm.conf"; then
    cannot "$CONF/slurm.conf exists and is not ours: this machine has its own SLURM set-up"
fi

# detached CMD...: start a daemon with stdin/stdout/stderr detached from this script's. A caller that
# captures this script's output (the SLURM test does) waits for EOF on the pipe, which never comes
# while a daemon still holds it. What a daemon prints before it opens its own log goes to STARTLOG.
STARTLOG=$LOGDIR/daemons-start.log
detached() { "$@" </dev/null >>"$STARTLOG" 2>&1; }

mkdir -p "$CONF" "$LOGDIR" "$STATE/slurmctld" "$STATE/slurmd" /run/slurm /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# --- munge -----------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    detached runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n </dev/null | unmunge >/dev/null || { say "munged does not answer"; tail -n 20 "$STARTLOG" >&2; exit 1; }

# put FILE MODE < text: write FILE from stdin; CHANGED=1 when it differs from what was there
# (the daemons then restart to read it)
CHANGED=0
put() {
    local tmp="$1.new"
    cat >"$tmp"
    chmod "$2" "$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; CHANGED=1; fi
}

# --- MariaDB and slurmdbd (accounting: sacct) ------------------------------------------------
if ! mysqladmin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    # started directly, not through an init system; its pid file is /run/mysqld/mysqld.pid
    (cd / && exec setsid mariadbd-safe --user=mysql --skip-networking=0 --bind-address=127.0.0.1) \
        </dev/null >>"$STARTLOG" 2>&1 &
    for _ in $(seq 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
mysqladmin ping >/dev/null 2>&1 || { say "MariaDB did not start"; tail -n 20 "$STARTLOG" >&2; exit 1; }
mysql -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'tokenbench';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

put "$CONF/slurmdbd.conf" 600 <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=tokenbench
StorageLoc=slurm_acct_db
EOF

# --- slurm.conf, gres.conf, cgroup.conf ------------------------------------------------------
put "$CONF/slurm.conf" 644 <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
SlurmdParameters=config_overrides
# processes of a job are tracked (and signalled by scancel) as a cgroup, as on most clusters
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# sacct shows each job's comment: the executor plugin writes the rule and wildcards there
AccountingStoreFlags=job_comment
# jobs stay visible to squeue 5 min after they end (the executor plugin's status checks)
MinJobAge=300
KillWait=30
InactiveLimit=0
MpiDefault=none
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:a100:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

put "$CONF/gres.conf" 644 <<EOF
$MARK
# one fake A100 (AutoDetect off: there is no NVML here). slurmd drops a GPU without a device
# file, so it is /dev/null: jobs given it get CUDA_VISIBLE_DEVICES=0 and run on the CPU.
AutoDetect=off
NodeName=$NODE Name=gpu Type=a100 File=/dev/null
EOF

put "$CONF/cgroup.conf" 644 <<EOF
$MARK
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$CHANGED" = 1 ]; then
    for d in slurmd slurmctld slurmdbd; do
        if running "/run/slurm/$d.pid"; then
            say "configuration changed: restarting $d"
            pid=$(cat "/run/slurm/$d.pid"); kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi

if ! running /run/slurm/slurmdbd.pid; then
    detached slurmdbd
    for _ in $(seq 50); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
fi
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
sacctmgr -i add account "$CLUSTER" Description="tokenbench tests" Organization=tokenbench >/dev/null 2>&1 || true
sacctmgr -i add user root DefaultAccount="$CLUSTER" Account="$CLUSTER" >/dev/null 2>&1 || true

if ! running /run/slurm/slurmctld.pid; then detached slurmctld; fi
if ! running /run/slurm/slurmd.pid; then detached slurmd; fi

for _ in $(seq 100); do
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -1)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 0.3
done
case "$state" in
    idle*|mix*|alloc*) ;;
    down*|drain*)
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
        sleep 1
        state=$(sinfo -h -N -n "$NODE" -o '%t' | head -1) ;;
esac
case "$state" in
    idle*|mix*|alloc*) ;;
    *)
        say "node $NODE is '${state:-unknown}', not idle"
        sinfo -N -l >&2 || true
        tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$STARTLOG" >&2 || true
        exit 1 ;;
esac
say "up: cluster $CLUSTER, node $NODE ($CPUS CPUs, gres gpu:a100:1), partitions cpu (default) and gpu"
