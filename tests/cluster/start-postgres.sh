#!/usr/bin/env bash
# Start a PostgreSQL server for the tests that record runs in PostgreSQL (tests/test_postgres.py):
# Debian's postgresql, one throwaway cluster under $PG_TEST_DIR, listening on 127.0.0.1:$PG_TEST_PORT
# with trust authentication (user postgres, no password). Idempotent: installs what is missing,
# initialises the cluster once, starts the server when it is not running. Ends by printing ONE line
# ("postgres ready: URL"). Must run as root (the server itself runs as the postgres user, which
# refuses root). Stop with:
#   runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl" -D "$PG_TEST_DIR/data" stop
set -euo pipefail

DIR=${PG_TEST_DIR:-/var/lib/seedrun-postgres}
PORT=${PG_TEST_PORT:-15432}

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q --no-install-recommends postgresql >/dev/null
  }
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() { runuser -u postgres -- "$@"; }

mkdir -p "$DIR"
chown postgres:postgres "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
  as_postgres "$BIN/initdb" -D "$DIR/data" --auth=trust --username=postgres --encoding=UTF8 >"$DIR/initdb.log" 2>&1
fi
if ! as_postgres "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  # fsync off: a test server's data is thrown away, and fsync would dominate its tests' time.
  as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off" >/dev/null
fi
as_postgres "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"
echo "postgres ready: postgresql+psycopg2://postgres@127.0.0.1:$PORT/postgres"
