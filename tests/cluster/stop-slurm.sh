#!/usr/bin/env bash
# Stop the test cluster that start-slurm.sh started: by the pids in its pid
# files (never by process name, other Slurm/MariaDB instances are left alone).
# Idempotent: stopping a stopped cluster does nothing.
#
#   SLURM_TEST_DIR  as for start-slurm.sh (default /var/lib/seedrun-slurm)
#   SLURM_PURGE=1   also delete state, logs and the accounting database.
#                   Job ids then restart at 1: never reuse a `%j` folder
#                   across a purge.
set -uo pipefail
DIR=${SLURM_TEST_DIR:-/var/lib/seedrun-slurm}
T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100)); }

# Same check as start-slurm.sh: a live, non-zombie process running command $2.
alive() {
  [ -f "$1" ] || return 1
  local p; p=$(cat "$1" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}
stopped=()
stop_pidfile() {  # pidfile command
  if alive "$1" "$2"; then
    local p; p=$(cat "$1")
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 100); do alive "$1" "$2" || break; sleep 0.1; done
    if alive "$1" "$2"; then echo "stop-slurm: $2 ($p) ignored SIGTERM, SIGKILL" >&2; kill -KILL "$p" 2>/dev/null; fi
    stopped+=("$2")
  fi
  rm -f "$1"
}

# Cancel leftover jobs first so that job processes end with their jobs
# (slurmstepd would otherwise outlive slurmd).
if alive "$DIR/slurmctld.pid" slurmctld; then
  scancel --full --quiet --user=root 2>/dev/null || true
  sleep 0.5
fi
stop_pidfile "$DIR/slurmd.pid"          slurmd   # a one-node cluster's, from before the second node
for f in "$DIR"/slurmd-*.pid; do           # one slurmd per node (SlurmdPidFile=.../slurmd-%n.pid)
  [ -e "$f" ] && stop_pidfile "$f" slurmd
done
stop_pidfile "$DIR/slurmctld.pid"       slurmctld
stop_pidfile "$DIR/slurmdbd.pid"        slurmdbd
stop_pidfile "$DIR/mysqlrun/mariadb.pid" mariadbd
stop_pidfile "$DIR/munged.pid"          munged   # only present if start-slurm.sh started munged
if [ "${SLURM_PURGE:-0}" = 1 ]; then
  rm -rf "$DIR"
  stopped+=("(purged $DIR)")
fi
echo "slurm stopped: ${stopped[*]:-nothing was running} ($(elapsed))"
