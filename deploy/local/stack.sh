#!/usr/bin/env bash
# The local stack without Docker: Apache Kafka (KRaft), Mosquitto, PostgreSQL
# on loopback, with data and logs under .run/.
#
#   stack.sh up [kafka|mosquitto|postgres ...]
#                    start what is not running (idempotent), write .run/stack.env
#   stack.sh down    stop only what this script started
#
# CITYBRAIN_RUN_DIR and CITYBRAIN_{KAFKA,MQTT,PG}_PORT give a second,
# independent stack (the fault tests start their own broker that way).
#   stack.sh status  one line per service
#
# A service given by the environment (KAFKA_BOOTSTRAP_SERVERS, MQTT_URL,
# DATABASE_URL) is used as it is and nothing is started for it.
#
# Security (README "Security"): Kafka has a SASL/SCRAM listener on
# KAFKA_PORT+2 with ACLs (`citybrain security bootstrap`, run on every `up`),
# next to the unauthenticated loopback listener the local tests use; Mosquitto
# has no anonymous access, per-device passwords from the device registry, ACL
# patterns and a TLS listener (MQTT_PORT+7000) with a CA generated once under
# .run/tls. Secrets are files under .run/secrets (mode 600). `up` on a stack
# started with an older configuration restarts the service whose generated
# configuration changed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN=${CITYBRAIN_RUN_DIR:-$ROOT/.run}
KAFKA_PORT=${CITYBRAIN_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${CITYBRAIN_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_SASL_PORT=${CITYBRAIN_KAFKA_SASL_PORT:-$((KAFKA_PORT + 2))}
MQTT_PORT=${CITYBRAIN_MQTT_PORT:-1883}
MQTT_TLS_PORT=${CITYBRAIN_MQTT_TLS_PORT:-$((MQTT_PORT + 7000))}
PG_PORT=${CITYBRAIN_PG_PORT:-54329}
PY=${CITYBRAIN_PYTHON:-$ROOT/.venv/bin/python}

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() { # port seconds name logfile
  local i
  for ((i = 0; i < $2 * 4; i++)); do
    port_open "$1" && return 0
    sleep 0.25
  done
  [ -f "${4:-}" ] && tail -20 "$4" >&2
  die "$3 did not open 127.0.0.1:$1 within $2 s (log: ${4:-none})"
}

need_py() {
  [ -x "$PY" ] || die "$PY not found: run deploy/local/install.sh (the security set-up runs in the project's venv)"
}

# the project's CLI without the caller's Kafka client settings: the set-up
# talks to the loopback listener as the bootstrap super user
citybrain() {
  env -u KAFKA_SECURITY_PROTOCOL -u KAFKA_SASL_USERNAME -u KAFKA_SASL_PASSWORD -u KAFKA_SSL_CA_FILE \
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m citybrain.cli "$@"
}

secret() { # file: create a random secret once, print it
  if [ ! -s "$1" ]; then
    mkdir -p "$(dirname "$1")"
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$1")
  fi
  cat "$1"
}

# ---------------------------------------------------------------- Kafka
kafka_config() { # the broker's configuration for these ports and this run dir
  # Placeholders first, ports second: chained replacements would rewrite a
  # port they had just written (KAFKA_PORT=19094 became 119096 under the SASL rule).
  sed -E -e 's#:9092([^0-9]|$)#:@PLAIN@\1#g; s#:9093([^0-9]|$)#:@CONTROLLER@\1#g; s#:9094([^0-9]|$)#:@SASL@\1#g' \
    -e "s#@PLAIN@#$KAFKA_PORT#g; s#@CONTROLLER@#$KAFKA_CONTROLLER_PORT#g; s#@SASL@#$KAFKA_SASL_PORT#g" \
    "$HERE/server.properties"
  echo "log.dirs=$RUN/kafka/data"
}

kafka_security() { # SCRAM users and ACLs; idempotent, so run on every `up`
  need_py
  wait_port "$KAFKA_SASL_PORT" 60 "kafka (SASL)" "$RUN/kafka/logs/server.log"
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if citybrain security bootstrap --bootstrap "127.0.0.1:$KAFKA_PORT" --secrets-dir "$RUN/secrets" \
      >"$RUN/kafka/logs/security.log" 2>&1; then
      log "$(tail -1 "$RUN/kafka/logs/security.log")"
      return
    fi
    sleep 2
  done
  cat "$RUN/kafka/logs/security.log" >&2
  die "kafka security set-up failed (log: $RUN/kafka/logs/security.log)"
}

kafka_up() {
  local dir=$RUN/kafka
  mkdir -p "$dir/logs"
  if pid_alive "$dir/kafka.pid"; then
    if kafka_config | cmp -s - "$dir/server.properties"; then
      log "kafka already running (pid $(cat "$dir/kafka.pid"))"
      kafka_security
      return
    fi
    log "kafka runs with an older configuration: restarting it"
    stop_pid "$dir/kafka.pid" kafka
  fi
  port_open "$KAFKA_PORT" && die "127.0.0.1:$KAFKA_PORT is taken by another process; stop it or set KAFKA_BOOTSTRAP_SERVERS to use it"
  port_open "$KAFKA_SASL_PORT" && die "127.0.0.1:$KAFKA_SASL_PORT (SASL) is taken by another process; set CITYBRAIN_KAFKA_SASL_PORT"
  command -v java >/dev/null || die "java not found: run deploy/local/install.sh"
  local stamp
  stamp=$(sha256sum "$HERE/pom.xml" | cut -c1-16)
  if [ "$(cat "$dir/libs.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "resolving Kafka jars from Maven Central"
    rm -rf "$dir/libs"
    mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$dir/libs" -DincludeScope=runtime >"$dir/logs/mvn.log" 2>&1 \
      || { tail -20 "$dir/logs/mvn.log" >&2; die "maven could not resolve the Kafka jars"; }
    echo "$stamp" >"$dir/libs.stamp"
  fi
  kafka_config >"$dir/server.properties"
  local cp="$dir/libs/*"
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting Kafka storage"
    local cid
    cid=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    java -cp "$cp" -Dlog4j.configuration="file:$HERE/log4j.properties" -Dkafka.logs.dir="$dir/logs" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1 \
      || { cat "$dir/logs/format.log" >&2; die "kafka storage format failed"; }
  fi
  log "starting kafka on 127.0.0.1:$KAFKA_PORT"
  # its own session, as mosquitto -d and pg_ctl give theirs: Ctrl-C on `make demo` (the
  # terminal signals the whole foreground process group) stopped the broker under the
  # running demo, whose consumers then failed with a traceback
  setsid nohup java -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HERE/log4j.properties" -Dkafka.logs.dir="$dir/logs" \
    -cp "$cp" kafka.Kafka "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 &
  echo $! >"$dir/kafka.pid"
  wait_port "$KAFKA_PORT" 90 kafka "$dir/logs/server.log"
  kafka_security
}

# ---------------------------------------------------------------- Mosquitto
tls_up() { # a local CA and a server certificate for 127.0.0.1/localhost, generated once
  local d=$RUN/tls
  [ -s "$d/ca.crt" ] && [ -s "$d/server.crt" ] && [ -s "$d/server.key" ] && return
  command -v openssl >/dev/null || die "openssl not found: run deploy/local/install.sh"
  log "generating the local CA and server certificate in $d"
  mkdir -p "$d"
  (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=citybrain local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$d/ca.key" -out "$d/ca.crt"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 825 -sha256 -extfile "$d/server.ext" -out "$d/server.crt"
  ) >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "could not generate the TLS certificates"; }
  chmod 755 "$d"
  chmod 644 "$d/ca.crt" "$d/server.crt"
}

mosquitto_config() {
  sed -e "s#@RUN@#$RUN#g" -e "s#^listener 1883#listener $MQTT_PORT#" "$HERE/mosquitto.conf.in"
  printf '%s\n' "# TLS: the same users and ACL (per_listener_settings false), the local CA" \
    "listener $MQTT_TLS_PORT 127.0.0.1" \
    "cafile $RUN/mosquitto/tls/ca.crt" \
    "certfile $RUN/mosquitto/tls/server.crt" \
    "keyfile $RUN/mosquitto/tls/server.key" \
    "tls_version tlsv1.2" \
    "user mosquitto"
}

mosquitto_up() {
  local dir=$RUN/mosquitto
  mkdir -p "$dir/data" "$dir/tls"
  command -v mosquitto >/dev/null || die "mosquitto not found: run deploy/local/install.sh"
  need_py
  tls_up
  cp "$RUN/tls/ca.crt" "$RUN/tls/server.crt" "$RUN/tls/server.key" "$dir/tls/"
  # users: the connector, the simulator/test publisher, one per registry device
  local plain=$dir/passwd.new user
  (
    umask 077
    for user in connector publisher; do echo "$user:$(secret "$RUN/secrets/mqtt-$user")"; done >"$plain"
    secret "$RUN/secrets/mqtt-device-master" >/dev/null
    citybrain security mqtt-devices --secrets-dir "$RUN/secrets" >>"$plain"
  ) || die "could not list the device credentials (citybrain security mqtt-devices)"
  mosquitto_passwd -U "$plain"
  mv "$plain" "$dir/passwd"
  cp "$HERE/mosquitto.acl" "$dir/acl"
  chown -R mosquitto: "$dir"
  chmod 600 "$dir/passwd" "$dir/acl" "$dir/tls/server.key"
  if pid_alive "$dir/mosquitto.pid"; then
    if mosquitto_config | cmp -s - "$dir/mosquitto.conf"; then
      kill -HUP "$(cat "$dir/mosquitto.pid")" # reloads the password file and the ACL
      log "mosquitto already running (pid $(cat "$dir/mosquitto.pid")); users and ACL reloaded"
      return
    fi
    log "mosquitto runs with an older configuration: restarting it"
    stop_pid "$dir/mosquitto.pid" mosquitto
  fi
  port_open "$MQTT_PORT" && die "127.0.0.1:$MQTT_PORT is taken by another process; stop it or set MQTT_URL to use it"
  port_open "$MQTT_TLS_PORT" && die "127.0.0.1:$MQTT_TLS_PORT (MQTT TLS) is taken by another process; set CITYBRAIN_MQTT_TLS_PORT"
  mosquitto_config >"$dir/mosquitto.conf"
  chown mosquitto: "$dir/mosquitto.conf"
  log "starting mosquitto on 127.0.0.1:$MQTT_PORT (TLS on $MQTT_TLS_PORT)"
  mosquitto -c "$dir/mosquitto.conf" -d
  wait_port "$MQTT_PORT" 20 mosquitto "$dir/mosquitto.log"
  wait_port "$MQTT_TLS_PORT" 20 "mosquitto (TLS)" "$dir/mosquitto.log"
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && echo "$d" && return; done
  die "PostgreSQL server binaries not found: run deploy/local/install.sh"
}

postgres_up() {
  local dir=$RUN/pg bin pw
  bin=$(pg_bin)
  mkdir -p "$dir"
  chown postgres: "$dir"
  pw=$(secret "$RUN/secrets/pg-citybrain")
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $dir/data"
    local pwfile="$dir/initpw"
    (umask 077 && secret "$RUN/secrets/pg-superuser" >"$pwfile")
    chown postgres: "$pwfile"
    runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
    mkdir -p "$dir/sock" && chown postgres: "$dir/sock"
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir/sock'
max_connections = 200
shared_buffers = 512MB
work_mem = 16MB
maintenance_work_mem = 256MB
wal_buffers = 16MB
max_wal_size = 4GB
checkpoint_timeout = 15min
synchronous_commit = on
logging_collector = off
EOF
  fi
  if runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    log "postgres already running"
  else
    port_open "$PG_PORT" && die "127.0.0.1:$PG_PORT is taken by another process; stop it or set DATABASE_URL to use it"
    log "starting postgres on 127.0.0.1:$PG_PORT"
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
      || { tail -20 "$dir/postgres.log" >&2; die "postgres did not start"; }
    touch "$dir/started-by-stack"
  fi
  local su_pw
  su_pw=$(secret "$RUN/secrets/pg-superuser")
  PGPASSWORD=$su_pw psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<EOF
SELECT 'CREATE ROLE citybrain LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'citybrain')\gexec
ALTER ROLE citybrain PASSWORD '$pw';
SELECT 'CREATE DATABASE citybrain OWNER citybrain' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'citybrain')\gexec
EOF
}

# ---------------------------------------------------------------- commands
write_env() {
  local f=$RUN/stack.env
  mkdir -p "$RUN"
  {
    echo "# written by deploy/local/stack.sh; sourced by the Makefile"
    echo "export KAFKA_BOOTSTRAP_SERVERS='${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$KAFKA_PORT}'"
    echo "export CITYBRAIN_SECRETS_DIR='$RUN/secrets'"
    if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
      # the authenticated listener; a service switches to it with KAFKA_BOOTSTRAP_SERVERS=$KAFKA_SASL_BOOTSTRAP
      # KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT KAFKA_SASL_USERNAME=<service> KAFKA_SASL_PASSWORD=<its password>
      echo "export KAFKA_SASL_BOOTSTRAP='127.0.0.1:$KAFKA_SASL_PORT'"
      echo "export KAFKA_SASL_MECHANISM='SCRAM-SHA-512'"
      local svc
      for svc in admin connector worker writer opscenter replay; do
        echo "export KAFKA_${svc^^}_PASSWORD='$(secret "$RUN/secrets/kafka-$svc")'"
      done
    fi
    if [ -n "${MQTT_URL:-}" ]; then
      echo "export MQTT_URL='$MQTT_URL'"
      echo "export MQTT_PUBLISH_URL='${MQTT_PUBLISH_URL:-$MQTT_URL}'"
    else
      echo "export MQTT_URL='mqtt://connector:$(secret "$RUN/secrets/mqtt-connector")@127.0.0.1:$MQTT_PORT'"
      echo "export MQTT_PUBLISH_URL='mqtt://publisher:$(secret "$RUN/secrets/mqtt-publisher")@127.0.0.1:$MQTT_PORT'"
      echo "export MQTT_TLS_URL='mqtts://connector:$(secret "$RUN/secrets/mqtt-connector")@127.0.0.1:$MQTT_TLS_PORT'"
      echo "export MQTT_CA_FILE='$RUN/tls/ca.crt'"
    fi
    echo "export CONNECTOR_PII_KEY='${CONNECTOR_PII_KEY:-$(secret "$RUN/secrets/pii-key")}'"
    echo "export DATABASE_URL='${DATABASE_URL:-postgresql://citybrain:$(secret "$RUN/secrets/pg-citybrain" 2>/dev/null)@127.0.0.1:$PG_PORT/citybrain}'"
  } >"$f.tmp"
  chmod 600 "$f.tmp"
  mv "$f.tmp" "$f"
}

up() {
  mkdir -p "$RUN" "$RUN/secrets"
  chmod 755 "$RUN"
  chmod 700 "$RUN/secrets"
  local only=" $* "
  sel() { [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; }
  if sel kafka; then
    if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then log "kafka given: $KAFKA_BOOTSTRAP_SERVERS"; else kafka_up; fi
  fi
  if sel mosquitto; then
    if [ -n "${MQTT_URL:-}" ]; then log "mqtt given by MQTT_URL"; else mosquitto_up; fi
  fi
  if sel postgres; then
    if [ -n "${DATABASE_URL:-}" ]; then log "postgres given by DATABASE_URL"; else postgres_up; fi
  fi
  write_env
  log "up; settings in $RUN/stack.env"
}

stop_pid() { # pidfile name
  if pid_alive "$1"; then
    local pid
    pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

down() {
  stop_pid "$RUN/kafka/kafka.pid" kafka
  stop_pid "$RUN/mosquitto/mosquitto.pid" mosquitto
  if [ -f "$RUN/pg/started-by-stack" ]; then
    log "stopping postgres"
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$RUN/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -f "$RUN/pg/started-by-stack"
  fi
}

status() {
  local old="closed: started with an older configuration, run stack.sh up"
  if pid_alive "$RUN/kafka/kafka.pid"; then
    echo "kafka: running"
    port_open "$KAFKA_SASL_PORT" && echo "kafka SASL: 127.0.0.1:$KAFKA_SASL_PORT" || echo "kafka SASL: $old"
  else echo "kafka: stopped"; fi
  if pid_alive "$RUN/mosquitto/mosquitto.pid"; then
    echo "mosquitto: running"
    port_open "$MQTT_TLS_PORT" && echo "mosquitto TLS: 127.0.0.1:$MQTT_TLS_PORT" || echo "mosquitto TLS: $old"
  else echo "mosquitto: stopped"; fi
  [ -f "$RUN/pg/data/postmaster.pid" ] && echo "postgres: running" || echo "postgres: stopped"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) die "usage: stack.sh up|down|status" ;;
esac
