#!/usr/bin/env bash
# A newcomer's one entry point on a laptop or CI: sets up .venv (once, again when
# setup.cfg changes) and then
#   scripts/dev.sh            runs the simulated unit, showing each purchase
#   scripts/dev.sh test ...   runs the test suite (extra args go to pytest)
#   scripts/dev.sh ARGS...    runs `vendor-node ARGS...`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/vendor-node" ] || [ setup.cfg -nt "$VENV/.installed" ]; then
  echo "dev.sh: setting up $VENV (first run only) ..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,office]'
  touch "$VENV/.installed"
fi

if [ "${1:-}" = "test" ]; then
  shift
  # Older Pi images carry tflite-runtime 2.14 (built against numpy 1.x): a side venv
  # lets a test run the shipped model there and prove every op version loads.
  TFL=.venv-tflite214
  if [ ! -x "$TFL/bin/python" ] || ! "$TFL/bin/python" -c "import tflite_runtime" 2>/dev/null; then
    echo "dev.sh: setting up $TFL for the tflite-runtime 2.14 compatibility test ..." >&2
    "$PY" -m venv "$TFL"
    "$TFL/bin/pip" install -q --disable-pip-version-check "tflite-runtime==2.14.0" "numpy<2"
  fi
  export VENDOR_NODE_TFLITE214_PYTHON="$PWD/$TFL/bin/python"
  exec "$VENV/bin/python" -m pytest -q "$@"
fi

if [ $# -eq 0 ]; then
  set -- simulate --customers 20 --state-dir state/sim --report reports/sim.json
fi
exec "$VENV/bin/vendor-node" "$@"
