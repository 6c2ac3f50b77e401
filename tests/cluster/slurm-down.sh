#!/usr/bin/env bash
# Stops the single-node SLURM cluster tests/cluster/slurm-up.sh started: cancels its jobs, then
# stops slurmd, slurmctld, slurmdbd, MariaDB and munged. Leaves the packages, the configuration
# in /etc/slurm and the accounting database, so a later slurm-up.sh starts in seconds.
# Does nothing on a machine whose /etc/slurm/slurm.conf slurm-up.sh did not write.
set -uo pipefail

MARK="# written by tokenbench tests/cluster/slurm-up.sh"
say() { echo "slurm-down: $*" >&2; }

if [ ! -f /etc/slurm/slurm.conf ] || ! grep -qF "$MARK" /etc/slurm/slurm.conf; then
    say "no cluster of ours here (/etc/slurm/slurm.conf not written by slurm-up.sh): nothing to stop"
    exit 0
fi

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
    local pid
    [ -f "$2" ] && pid=$(cat "$2") && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { say "stopped $1"; return 0; }; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    say "killed $1 (it ignored SIGTERM for 10 s)"
}

if command -v scancel >/dev/null 2>&1 && [ -f /run/slurm/slurmctld.pid ]; then
    scancel --user=root 2>/dev/null && sleep 1
fi
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop slurmdbd /run/slurm/slurmdbd.pid
if mysqladmin ping >/dev/null 2>&1; then
    mysqladmin shutdown && say "stopped MariaDB"
fi
stop munged /run/munge/munged.pid
exit 0
