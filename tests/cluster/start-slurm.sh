#!/usr/bin/env bash
# Start a two-node Slurm test cluster on this machine (nodes "localhost" and
# "seedrun-n2", both slurmd on this host; partition "debug" has both), with accounting (slurmdbd + MariaDB) so that `sacct`
# works. Idempotent: installs what is missing, starts what is not running, and
# when everything is already up with the same configuration it does nothing.
# Ends by printing ONE line ("slurm ready: ..."); progress goes to stderr only
# with SLURM_VERBOSE=1.
#
# Why each piece is here:
#   - accounting: submitit polls `sacct` for job state; without it, result()
#     on a cancelled or killed job waits forever.
#   - AuthInfo=cred_expire=10: a requeued job can start again after ~11 s
#     instead of ~121 s (only read at slurmctld start, hence the restart when
#     the config changes).
#   - slurmd -N localhost: the container's hostname is not "localhost".
#   - a second node on the same host (multi-node runs are tested): its own
#     NodeName, NodeHostname (its name, 127.0.0.1), NodeAddr=127.0.0.1 and a
#     Port of its own; spool, pid and log files named with %n; `slurmd -N NAME`
#     each (see the NodeName lines for what this Slurm refuses).
#     Its name is added to /etc/hosts (once): a job takes MASTER_ADDR from its
#     node list, so every node name must resolve.
#   - nodes shaped like an 8-GPU node (SLURM_NODE_CPUS, SLURM_NODE_MEM_MB,
#     SLURM_NODE_GPUS; config_overrides lets slurmd advertise more than the
#     machine has): seedrun checks requests against the nodes sinfo reports,
#     and the paper sweeps' requests must fit here as on a GPU cluster. The
#     GPUs are gres without device files: they can be scheduled, none exists.
#   - many advertised CPUs (SlurmdParameters=config_overrides): all tasks of a
#     small array run at once; `scancel --signal` on an array task fails while
#     its siblings are still pending.
#   - JobRequeue=1: batch jobs may be requeued (tests simulate preemption with
#     `scontrol requeue`; submitit requeues itself on timeout).
#   - partitions "preemptible" and "urgent" (PreemptMode=CANCEL), node localhost
#     only: a job of urgent that asks every CPU of that node really preempts one of
#     preemptible, which ends PREEMPTED (tests/test_slurm_preempt.py).
#   - no systemd in the container: daemons are started directly and tracked by
#     pid files in $DIR (stop-slurm.sh kills by those pids, never by name).
#
# Environment:
#   SLURM_TEST_DIR        state, spool, logs, pid files, database
#                         (default /var/lib/seedrun-slurm)
#   SLURM_NODE_CPUS       CPUs advertised for each node (default 128)
#   SLURM_NODE_MEM_MB     memory advertised for each node, MB (default 1000000)
#   SLURM_NODE_GPUS       GPUs (gres, no devices) advertised for each node (default 8)
#   SLURM_NODE2           the second node's name (default seedrun-n2)
#   SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 1001, Slurm's own default)
#   SLURM_DB_PORT         MariaDB's TCP port on 127.0.0.1 (default 13306)
#   SLURM_WAIT_S          how long to wait for the node to be idle (default 60)
#   SLURM_VERBOSE         1: print progress lines to stderr
#
# Must run as root on Debian 12 (slurm-wlm 22.05). Stop with stop-slurm.sh.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/var/lib/seedrun-slurm}
NODE_CPUS=${SLURM_NODE_CPUS:-128}
MEM=${SLURM_NODE_MEM_MB:-1000000}
GPUS=${SLURM_NODE_GPUS:-8}
NODE2=${SLURM_NODE2:-seedrun-n2}
NODES=(localhost "$NODE2")
MAX_ARRAY=${SLURM_MAX_ARRAY_SIZE:-1001}
DB_PORT=${SLURM_DB_PORT:-13306}
WAIT_S=${SLURM_WAIT_S:-60}
VERBOSE=${SLURM_VERBOSE:-0}
PARTITION=debug

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100)); }
log() { [ "$VERBOSE" = 1 ] && echo "[start-slurm $(elapsed)] $*" >&2; return 0; }
die() { echo "start-slurm: $*" >&2; exit 1; }

# True when pid file $1 names a live (non-zombie) process whose command is $2.
# Checking the command guards against a stale pid file whose pid was reused.
# /proc is read directly so procps is not needed.
alive() {
  [ -f "$1" ] || return 1
  local p; p=$(cat "$1" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] || return 1
  # field 3 of /proc/PID/stat is the state; Z = zombie (PID 1 here may reap lazily)
  [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}
# Stop the process named by pid file $1 if it is still command $2.
stop_pidfile() {
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  local p; p=$(cat "$1")
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do alive "$1" "$2" || break; sleep 0.1; done
  alive "$1" "$2" && kill -KILL "$p" 2>/dev/null || true
  rm -f "$1"
}

[ "$(uname -s)" = Linux ] || die "needs Linux"
[ "$(id -u)" = 0 ] || die "must run as root"

# Two pytest sessions (or xdist workers) may call this at once: serialize.
mkdir -p "$DIR"
exec 9>"$DIR/.start.lock"
flock -w 300 9 || die "could not take $DIR/.start.lock"

# ---------------------------------------------------------------- install
pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts must not try to start services (no systemd here; a stray
  # mariadb on :3306 or a slurmctld with the stock config is not wanted).
  # Docker images ship such a policy-rc.d; add one for the install if absent.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  # `apt-get update` only when needed: when a package has no install
  # candidate in the current lists, or when installing from them fails
  # (stale lists point at files the mirror no longer has).
  need_update=0
  for p in "${missing[@]}"; do
    apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]' || need_update=1
  done
  inst() { apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" \
             >>"$DIR/apt.log" 2>&1; }
  if [ "$need_update" = 1 ]; then apt-get update -q >>"$DIR/apt.log" 2>&1 || true; fi
  if ! inst; then
    echo "== install failed, apt-get update and retry" >>"$DIR/apt.log"
    apt-get update -q >>"$DIR/apt.log" 2>&1 || true
    inst || { [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -20 "$DIR/apt.log" >&2; die "apt-get install failed"; }
  fi
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
log "packages present"

mkdir -p "$DIR"/{state,spool,log}
chmod 755 "$DIR"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_NODE_GPUS must be 1 or more, got '$GPUS'"
[[ "$NODE2" =~ ^[a-z][a-z0-9-]*$ ]] || die "SLURM_NODE2 must be a host name, got '$NODE2'"

# ---------------------------------------------------------------- node names resolve
# Once: the line is added only when the name does not resolve yet.
if ! getent hosts "$NODE2" >/dev/null; then
  printf '127.0.0.1 %s\n' "$NODE2" >> /etc/hosts
  log "added $NODE2 to /etc/hosts"
fi
getent hosts "$NODE2" >/dev/null || die "$NODE2 does not resolve after adding it to /etc/hosts"

# ---------------------------------------------------------------- config

mkdir -p /etc/slurm
SLURM_CONF_NEW=$(cat <<CONF
# Generated by seedrun tests/cluster/start-slurm.sh; rewritten on every start.
ClusterName=seedrun
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# requeued jobs may start again after cred_expire+1 s (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
# one slurmd per node on this host: %n (the node's name) keeps their files apart
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
# no cgroups in the container: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# batch jobs may be requeued (preemption / submitit's own requeue on timeout)
JobRequeue=1
MaxArraySize=$MAX_ARRAY
# schedule every 2 s so tests do not wait for the default 60 s backfill pass
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=5
# advertise $NODE_CPUS CPUs, $MEM MB and $GPUS GPUs whatever the hardware has (whole arrays run at once;
# requests are checked against nodes shaped like a GPU cluster's)
SlurmdParameters=config_overrides
GresTypes=gpu
# Two slurmd on this host. With this Slurm, two nodes with NodeHostname=localhost are a fatal "Duplicated
# NodeHostName": the second node's host is its own name (in /etc/hosts, 127.0.0.1), and node localhost
# comes last (slurmctld takes any name for "localhost" while that is the one node it knows)
NodeName=$NODE2 NodeHostname=$NODE2 NodeAddr=127.0.0.1 Port=6820 CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 Port=6818 CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
# preemption as a shared cluster has it (PreemptMode=CANCEL): a job of "urgent" cancels jobs of
# "preemptible" that hold what it needs, and they end PREEMPTED; jobs of the default partition are never preempted
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=$PARTITION Nodes=localhost,$NODE2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=preemptible Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
)
# GPUs whose "devices" are empty files (none exist here; slurmd counts a GPU only with a File): Slurm
# schedules them for jobs that ask; such jobs find no GPU and train on the CPU
mkdir -p "$DIR/gpu"
for i in $(seq 0 $((GPUS - 1))); do : >> "$DIR/gpu/nvidia$i"; done
GRES_CONF_NEW="NodeName=localhost,$NODE2 Name=gpu File=$DIR/gpu/nvidia[0-$((GPUS - 1))]"
SLURMDBD_CONF_NEW=$(cat <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
)
conf_changed=0
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$GRES_CONF_NEW" ]; then
  printf '%s\n' "$GRES_CONF_NEW" > /etc/slurm/gres.conf
  conf_changed=1
fi
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$SLURM_CONF_NEW" ]; then
  printf '%s\n' "$SLURM_CONF_NEW" > /etc/slurm/slurm.conf.new
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  conf_changed=1
fi
dbd_conf_changed=0
if [ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" != "$SLURMDBD_CONF_NEW" ]; then
  # slurmdbd refuses a config readable by others (it holds the DB password)
  ( umask 077; printf '%s\n' "$SLURMDBD_CONF_NEW" > /etc/slurm/slurmdbd.conf )
  dbd_conf_changed=1
fi
chmod 600 /etc/slurm/slurmdbd.conf

node_ok() { case "$(sinfo -h -n "$1" -o %T 2>/dev/null)" in idle|mixed|allocated|completing) return 0;; esac; return 1; }
nodes_ok() { local n; for n in "${NODES[@]}"; do node_ok "$n" || return 1; done; }
slurmds_alive() { local n; for n in "${NODES[@]}"; do alive "$DIR/slurmd-$n.pid" slurmd || return 1; done; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
DBRUN="$DIR/mysqlrun"
sqlroot() { mariadb --no-defaults -S "$DBRUN/mysql.sock" -uroot "$@"; }

# Fast path: everything already up with this very configuration -> do nothing.
if [ "$conf_changed$dbd_conf_changed" = 00 ] && munge_ok \
   && alive "$DBRUN/mariadb.pid" mariadbd && alive "$DIR/slurmdbd.pid" slurmdbd \
   && alive "$DIR/slurmctld.pid" slurmctld && slurmds_alive && nodes_ok; then
  echo "slurm ready: already running, partition=$PARTITION nodes=localhost,$NODE2 cpus=$NODE_CPUS gpus=$GPUS accounting=slurmdbd state=$DIR ($(elapsed))"
  exit 0
fi

# Daemons started below must not keep this script's stdout/stderr open (the
# pytest fixture reads them through a pipe and would otherwise never see EOF)
# nor the lock on fd 9 (the next start-slurm.sh would wait for it forever).
DLOG="$DIR/log/daemon-start.log"
detached() { "$@" </dev/null >>"$DLOG" 2>&1 9>&-; }

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! munge_ok; then
  rm -f /run/munge/munge.socket.2.lock 2>/dev/null || true
  detached runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/munged.pid"        # marks "we started it" for stop-slurm.sh
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
fi
munge_ok || die "munged does not answer (see $DLOG)"
log "munged up"

# ---------------------------------------------------------------- mariadb
DB="$DIR/mysql"
mkdir -p "$DB" "$DBRUN"; chown mysql:mysql "$DB" "$DBRUN"
if [ ! -d "$DB/mysql" ]; then
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB" --skip-test-db \
    --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
    || { tail -20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
fi
if ! sqlroot -e 'select 1' >/dev/null 2>&1; then
  # mariadbd does not daemonize: setsid + & detaches it from this script
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB" \
    --socket="$DBRUN/mysql.sock" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --pid-file="$DBRUN/mariadb.pid" --log-error="$DIR/log/mariadb.err" \
    --skip-log-bin --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 9>&- &
  for _ in $(seq 300); do sqlroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  sqlroot -e 'select 1' >/dev/null 2>&1 || { tail -20 "$DIR/log/mariadb.err" >&2; die "mariadb did not start"; }
fi
sqlroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
log "mariadb up on 127.0.0.1:$DB_PORT"

# ---------------------------------------------------------------- slurmdbd
[ "$dbd_conf_changed" = 1 ] && stop_pidfile "$DIR/slurmdbd.pid" slurmdbd
if ! alive "$DIR/slurmdbd.pid" slurmdbd; then
  detached /usr/sbin/slurmdbd
  for _ in $(seq 150); do sacctmgr -n -P show cluster >/dev/null 2>&1 && break; sleep 0.1; done
fi
sacctmgr -n -P show cluster >/dev/null 2>&1 || { tail -20 "$DIR/log/slurmdbd.log" >&2; die "slurmdbd does not answer"; }
log "slurmdbd up"

# ---------------------------------------------------------------- slurmctld, slurmd
# A changed slurm.conf needs real restarts (AuthInfo and the node's CPU
# count are not picked up by `scontrol reconfigure`). Jobs survive: state is
# saved in $DIR/state.
if [ "$conf_changed" = 1 ]; then
  stop_pidfile "$DIR/slurmd.pid" slurmd   # a one-node cluster's slurmd, from before the second node
  for n in "${NODES[@]}"; do stop_pidfile "$DIR/slurmd-$n.pid" slurmd; done
  stop_pidfile "$DIR/slurmctld.pid" slurmctld
fi
alive "$DIR/slurmctld.pid" slurmctld || detached /usr/sbin/slurmctld
for _ in $(seq 150); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
scontrol ping 2>/dev/null | grep -q 'is UP' || { tail -20 "$DIR/log/slurmctld.log" >&2; die "slurmctld is not up"; }
log "slurmctld up"
for n in "${NODES[@]}"; do
  mkdir -p "$DIR/spool/$n"
  alive "$DIR/slurmd-$n.pid" slurmd || detached /usr/sbin/slurmd -N "$n"
done
log "slurmd started for ${NODES[*]}"

# ---------------------------------------------------------------- wait for idle
deadline=$(( $(date +%s) + WAIT_S ))
until nodes_ok; do
  for n in "${NODES[@]}"; do
    case "$(sinfo -h -n "$n" -o %T 2>/dev/null || true)" in
      # e.g. left down by an earlier unclean stop
      down*|drain*) scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
    esac
  done
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "start-slurm: nodes not idle after ${WAIT_S}s: $(sinfo -h -N -o '%N %T %E' 2>&1 | tr '\n' ';')" >&2
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR"/log/slurmd-*.log >&2
    exit 1
  fi
  sleep 0.2
done
echo "slurm ready: partition=$PARTITION nodes=localhost,$NODE2 cpus=$NODE_CPUS gpus=$GPUS accounting=slurmdbd state=$DIR ($(elapsed))"
