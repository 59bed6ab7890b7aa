#!/usr/bin/env bash
# A newcomer's one entry point on a laptop or CI: sets up .venv (once, again when
# setup.cfg changes) and then
#   scripts/dev.sh            runs a whole office: the back office (SQLite) and a simulated unit syncing to it
#   scripts/dev.sh test ...   runs the test suite (extra args go to pytest)
#   scripts/dev.sh ARGS...    runs `vendor-node ARGS...`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
# pip install -e also builds the compiled palm-code kernel in place (vendor_node/hand/_bitkernel*.so; needs a C
# compiler and the Python headers, else the numpy kernels run); it is rebuilt when its source changes. Another
# worktree using this venv builds its own: python setup.py build_ext --inplace
if [ ! -x "$VENV/bin/vendor-node" ] || [ setup.cfg -nt "$VENV/.installed" ] || [ setup.py -nt "$VENV/.installed" ] \
    || [ vendor_node/hand/_bitkernel.c -nt "$VENV/.installed" ]; then
  echo "dev.sh: setting up $VENV (first run only) ..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,office]'
  touch "$VENV/.installed"
fi

if [ "${1:-}" = "test" ]; then
  shift
  # Older Pi images carry tflite-runtime 2.14 (built against numpy 1.x): a side venv
  # lets a test run the shipped model there and prove every op version loads. It holds
  # what such a unit holds: numpy 1.x and the OpenCV pinned for it (hand/ needs cv2).
  TFL=.venv-tflite214
  if [ ! -x "$TFL/bin/python" ] || ! "$TFL/bin/python" -c "import tflite_runtime, cv2" 2>/dev/null; then
    echo "dev.sh: setting up $TFL for the tflite-runtime 2.14 compatibility test ..." >&2
    "$PY" -m venv "$TFL"
    "$TFL/bin/pip" install -q --disable-pip-version-check "tflite-runtime==2.14.0" "numpy<2" \
      "opencv-python-headless==4.11.0.86"
  fi
  export VENDOR_NODE_TFLITE214_PYTHON="$PWD/$TFL/bin/python"
  exec "$VENV/bin/python" -m pytest -q "$@"
fi

if [ $# -gt 0 ]; then
  exec "$VENV/bin/vendor-node" "$@"
fi

# No arguments: a whole office on this laptop. The back office on SQLite (state/office), a simulated
# unit provisioned with its fleet keys and registered as a technician would, 20 customers, the sync,
# then where to log in. Ctrl-C stops the office; the state is kept for the next run.
VN="$VENV/bin/vendor-node"
OFFICE=state/office
UNIT=state/sim-office
UNIT_ID=sim-office-1
PORT=${OFFICE_PORT:-8000}
URL="http://127.0.0.1:$PORT"
DB="sqlite:///$OFFICE/office.db"
healthy() { "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
  "$URL/healthz" >/dev/null 2>&1; }
mkdir -p "$OFFICE" reports
if healthy; then
  echo "dev.sh: something already answers on $URL; stop it or set OFFICE_PORT" >&2
  exit 1
fi
setsid "$VN" office serve --demo --db "$DB" --bind "127.0.0.1:$PORT" >"$OFFICE/office.log" 2>&1 &
OFFICE_PID=$!
trap 'kill -TERM -- -$OFFICE_PID 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 300); do  # the office migrates its database first
  if healthy; then break; fi
  if ! kill -0 "$OFFICE_PID" 2>/dev/null; then cat "$OFFICE/office.log" >&2; exit 1; fi
  sleep 0.2
done
if [ ! -f "$UNIT/unit_id" ]; then
  "$VN" provision --state-dir "$UNIT" --unit-id "$UNIT_ID" \
    --fleet-public-key "$OFFICE/fleet-keys/fleet_public_key.pem" --fleet-template-key "$OFFICE/fleet-keys/fleet_template.key"
fi
FINGERPRINT=$("$VN" unit fingerprint --state-dir "$UNIT" | sed -n 's/^fingerprint //p')
"$VN" office register-unit "$UNIT_ID" --exist-ok --fingerprint "$FINGERPRINT" --db "$DB" --fleet-keys "$OFFICE/fleet-keys"
"$VN" simulate --office "$URL" --customers 20 --state-dir "$UNIT" --report reports/sim.json
echo
grep -o 'log in as .*' "$OFFICE/office.log" | tail -1 | sed "s|^|dev.sh: the back office is at $URL/ : |"
echo "dev.sh: sales, balances, the unit's health and the audit log are there; Ctrl-C stops the office."
wait "$OFFICE_PID"
