#!/usr/bin/env bash
# Starts or stops a private PostgreSQL cluster for the export tests: its own
# data directory under DIR, 127.0.0.1 and a free port only, password
# authentication (SCRAM) for the superuser "meter", and a database "meter".
#
#   bash tests/pg_cluster.sh start DIR   # writes DIR/env (PGHOST, PGPORT, ..., METER_TEST_DSN)
#   bash tests/pg_cluster.sh stop DIR
#
# The server binaries come from $PG_BINDIR, else the newest
# /usr/lib/postgresql/*/bin (Debian's postgresql package), else $PATH.
# initdb and postgres refuse to run as root, so as root they run as the
# "postgres" user that the Debian package creates.
set -euo pipefail

command=${1:-}
dir=${2:-}
if [ -z "$command" ] || [ -z "$dir" ]; then
  echo "usage: pg_cluster.sh start|stop DIR" >&2
  exit 2
fi

find_bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    echo "$PG_BINDIR"
    return
  fi
  local candidate
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
      echo "$candidate"
      return
    fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"
    return
  fi
  echo "pg_cluster: no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin" \
    "or PATH; install Debian's postgresql package (engine/install-deps.sh does) or set" \
    "PG_BINDIR" >&2
  exit 1
}

# Runs a command as the cluster's owner: the postgres user when this script runs as root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
      echo "pg_cluster: running as root needs the \"postgres\" user to own the cluster;" \
        "install Debian's postgresql package, or run the tests as another user" >&2
      exit 1
    fi
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

start() {
  local bindir
  bindir=$(find_bindir)
  mkdir -p "$dir"
  local cluster=$dir/pg
  rm -rf "$cluster"
  mkdir -p "$cluster/sock"
  local password
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s\n' "$password" >"$cluster/pwfile"
  chmod 600 "$cluster/pwfile"
  if [ "$(id -u)" -eq 0 ]; then
    # The postgres user must reach the cluster directory through DIR and its parents.
    chmod o+x "$dir" "$(dirname "$dir")" 2>/dev/null || true
    chown -R postgres: "$cluster"
  fi
  as_owner "$bindir/initdb" -D "$cluster/data" -U meter --pwfile="$cluster/pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C.UTF-8 \
    >"$cluster/initdb.log" 2>&1 || {
    echo "pg_cluster: initdb failed:" >&2
    cat "$cluster/initdb.log" >&2
    exit 1
  }
  local port attempt started=0
  for attempt in 1 2 3; do
    port=$(free_port)
    if as_owner "$bindir/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$cluster/sock" \
      start >/dev/null 2>&1; then
      started=1
      break
    fi
  done
  if [ "$started" -ne 1 ]; then
    echo "pg_cluster: the server did not start; its log:" >&2
    cat "$cluster/server.log" >&2 || true
    exit 1
  fi
  PGPASSWORD=$password psql -X -q -h 127.0.0.1 -p "$port" -U meter -d postgres \
    -c "CREATE DATABASE meter" >/dev/null
  cat >"$dir/env" <<ENV
PG_BINDIR=$bindir
PGHOST=127.0.0.1
PGPORT=$port
PGUSER=meter
PGDATABASE=meter
PGPASSWORD=$password
METER_TEST_DSN='host=127.0.0.1 port=$port dbname=meter user=meter password=$password'
ENV
  chmod 600 "$dir/env"
  echo "$port"
}

stop() {
  local cluster=$dir/pg
  [ -d "$cluster/data" ] || return 0
  local bindir
  bindir=$(find_bindir)
  as_owner "$bindir/pg_ctl" -D "$cluster/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *)
    echo "pg_cluster: unknown command \"$command\"; use start or stop" >&2
    exit 2
    ;;
esac
