#!/usr/bin/env bash
# Installs what the project needs and is missing, idempotently: Debian
# packages (Java 17, Maven, Mosquitto, PostgreSQL) and the Python virtualenv
# pinned by requirements.lock. Safe to run on every make target.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${CITYBRAIN_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
log() { printf '[install] %s\n' "$*" >&2; }

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v runuser >/dev/null || missing+=(util-linux)
# the local CA and the MQTT TLS listener's certificate
command -v openssl >/dev/null || missing+=(openssl)
# the dashboard's browser test drives Debian's Chromium (never a downloaded browser)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Chinese glyphs for the dashboard on this machine
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "[install] ERROR: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.citybrain-stamp" 2>/dev/null)" != "$stamp" ]; then
  command -v "$PY" >/dev/null || PY=python3
  log "creating virtualenv $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.lock"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$stamp" >"$VENV/.citybrain-stamp"
fi
