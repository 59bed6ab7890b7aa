#!/usr/bin/env bash
# Install vendor-node on a Raspberry Pi (64-bit Raspberry Pi OS, bookworm or trixie), as root:
#   sudo scripts/install.sh [--wheelhouse DIR] [--mdb-usb /dev/ttyACM0] [--with-hw-tests]
# and, without root:
#   scripts/install.sh --build-wheelhouse DIR --os bookworm|trixie   (on a laptop with internet: the
#                           pinned aarch64 wheels for an offline install; flash.sh --wheelhouse puts DIR on the card)
#   scripts/install.sh --print-udev-rule /dev/ttyACM0  (the rule --mdb-usb would install for that adapter)
#
# - apt: python3-numpy, python3-picamera2, python3-lgpio, python3-venv. Already there on a stock Pi OS
#   image: then apt is not needed, so an offline unit installs from the wheelhouse alone.
# - apt, best effort: gcc and python3-dev, to compile the palm-code 1:N kernel (vendor_node/hand/_bitkernel.c)
#   when the package is installed from source. Tried only when apt is reachable (an offline unit skips them);
#   without them the install still succeeds and the unit matches with the numpy kernels: several times slower
#   at 10,000 employees on bookworm's numpy 1.24, and `vendor-node selftest` names the kernel that runs.
# - a venv at /opt/vendor-node/venv with --system-site-packages: picamera2 AND numpy come from the OS.
#   pip installs deploy/pi-requirements.txt (pinned) with numpy pinned to the OS's version, so no
#   numpy 2 wheel can shadow the one picamera2 was built against; the install fails if one did.
# - a dedicated system user `vendor-node` in the video, gpio and dialout groups
# - /etc/vendor-node/config.toml from the example (never overwritten; board.port = /dev/vendor-mdb)
# - the udev rule naming the MDB adapter /dev/vendor-mdb (the GPIO UART, or the USB adapter given)
# - systemd-time-wait-sync enabled with a bounded wait (the service waits for NTP, at most 90 s)
# - the systemd units, enabled
# - --with-hw-tests: pytest too (from the wheelhouse, which carries it), for tests/test_hardware.py
# Running it again upgrades the package and the units; state in /var/lib/vendor-node is kept.
# Exit codes: 0 installed, 1 failed (the message says why), 2 bad arguments.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PROG=install.sh
PREFIX=/opt/vendor-node
USER_NAME=vendor-node
CONF_DIR=/etc/vendor-node
APT_PACKAGES=(python3-venv python3-numpy python3-picamera2 python3-lgpio)
BUILD_PACKAGES=(gcc python3-dev)  # optional: the compiled palm-code kernel (else the slower numpy kernels)
REQUIREMENTS="$SRC/deploy/pi-requirements.txt"
HW_TEST_TOOLS=(pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1)  # for tests/test_hardware.py on the unit only
# numpy of each Pi OS release (what picamera2 there is built against) and its Python, for --build-wheelhouse
declare -A OS_NUMPY=([bookworm]=1.24.2 [trixie]=2.2.4)
declare -A OS_PYTHON=([bookworm]=3.11 [trixie]=3.13)

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

WHEELHOUSE='' MDB_USB='' BUILD_DIR='' BUILD_OS='' PRINT_RULE='' WITH_HW_TESTS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse|--mdb-usb|--build-wheelhouse|--os|--print-udev-rule)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      case "$1" in
        --wheelhouse) WHEELHOUSE=$2 ;; --mdb-usb) MDB_USB=$2 ;; --build-wheelhouse) BUILD_DIR=$2 ;;
        --os) BUILD_OS=$2 ;; --print-udev-rule) PRINT_RULE=$2 ;;
      esac
      shift 2 ;;
    --with-hw-tests) WITH_HW_TESTS=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

# The udev rule for one USB adapter: its vendor, product and serial number, so no other USB serial
# device (a second adapter, a modem) ever takes /dev/vendor-mdb.
udev_rule_for() {
  local device=$1 props vendor model serial
  command -v udevadm >/dev/null 2>&1 || die "udevadm not found (apt install udev)"
  props=$(udevadm info --query=property --name="$device" 2>&1) || die "$device: udevadm cannot see it: $props"
  vendor=$(printf '%s\n' "$props" | sed -n 's/^ID_VENDOR_ID=//p')
  model=$(printf '%s\n' "$props" | sed -n 's/^ID_MODEL_ID=//p')
  serial=$(printf '%s\n' "$props" | sed -n 's/^ID_SERIAL_SHORT=//p')
  [[ "$vendor" =~ ^[0-9a-fA-F]{4}$ && "$model" =~ ^[0-9a-fA-F]{4}$ ]] \
    || die "$device: not a USB serial adapter (no USB vendor/product id in udevadm info); for the GPIO UART leave out --mdb-usb"
  printf '# The USB MDB adapter %s:%s%s, named by scripts/install.sh --mdb-usb %s\n' \
    "$vendor" "$model" "${serial:+ serial $serial}" "$device"
  printf 'SUBSYSTEM=="tty", ATTRS{idVendor}=="%s", ATTRS{idProduct}=="%s"' "$vendor" "$model"
  [ -z "$serial" ] || printf ', ATTRS{serial}=="%s"' "$serial"
  printf ', SYMLINK+="vendor-mdb", GROUP="dialout", MODE="0660"\n'
}

if [ -n "$PRINT_RULE" ]; then
  udev_rule_for "$PRINT_RULE"
  exit 0
fi

if [ -n "$BUILD_DIR" ]; then
  [ -n "${OS_NUMPY[$BUILD_OS]:-}" ] || usage_error "--os must be bookworm or trixie (the Pi OS release on the card)"
  python_version=${OS_PYTHON[$BUILD_OS]}
  mkdir -p "$BUILD_DIR"
  printf 'numpy==%s\n' "${OS_NUMPY[$BUILD_OS]}" >"$BUILD_DIR/os-numpy-constraint.txt"
  echo "$PROG: downloading the pinned aarch64 wheels for Python $python_version ($BUILD_OS) into $BUILD_DIR" >&2
  # numpy is downloaded only to satisfy the resolver; install.sh never installs it (the OS's is used)
  python3 -m pip download --disable-pip-version-check --only-binary=:all: --dest "$BUILD_DIR" \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform linux_aarch64 --python-version "$python_version" --implementation cp \
    -r "$REQUIREMENTS" -c "$BUILD_DIR/os-numpy-constraint.txt" "setuptools>=61" wheel "${HW_TEST_TOOLS[@]}" \
    || die "pip download failed (network? a pinned version without an aarch64 wheel for Python $python_version?)"
  rm -f "$BUILD_DIR"/numpy-*.whl
  cp "$REQUIREMENTS" "$BUILD_DIR/pi-requirements.txt"
  echo "$PROG: wheelhouse ready: $(find "$BUILD_DIR" -name '*.whl' | wc -l) wheels, $(du -sh "$BUILD_DIR" | cut -f1)" >&2
  exit 0
fi

case "$(uname -m)" in
  aarch64|x86_64) ;;
  armv7l|armv6l) die "this is a 32-bit OS ($(uname -m)): LiteRT and OpenCV publish no 32-bit ARM wheels, so the unit cannot run its model here; flash Raspberry Pi OS (64-bit)" ;;
  *) die "unsupported machine $(uname -m): the unit runs on 64-bit Raspberry Pi OS (aarch64)" ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "$PROG: run as root (sudo $0)" >&2
  exit 2
fi
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || usage_error "--wheelhouse $WHEELHOUSE: no such folder"
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi
[ -z "$MDB_USB" ] || [ -e "$MDB_USB" ] || usage_error "--mdb-usb $MDB_USB: no such device (plug the adapter in; see ls /dev/ttyACM* /dev/ttyUSB*)"

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "$PROG: apt packages: ${missing[*]}" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    die "apt could not install ${missing[*]} (no network? they ship with Raspberry Pi OS images; connect once or use a full image)"
  fi
fi
build_missing=()
for package in "${BUILD_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || build_missing+=("$package")
done
if [ ${#build_missing[@]} -gt 0 ]; then  # best effort: an offline unit goes on with the numpy kernels
  echo "$PROG: apt packages to compile the palm-code kernel: ${build_missing[*]} (skipped when offline)" >&2
  if [ ${#missing[@]} -gt 0 ] || apt-get update -qq -o Acquire::Retries=0 -o Acquire::http::Timeout=10 >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${build_missing[@]}" >/dev/null 2>&1 \
      || echo "$PROG: warning: apt could not install ${build_missing[*]}: the unit will match with the slower numpy kernels" >&2
  else
    echo "$PROG: warning: apt unreachable, ${build_missing[*]} not installed: the unit will match with the slower numpy kernels" >&2
  fi
fi
OS_NUMPY_VERSION=$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)') \
  || die "the OS's numpy does not import (apt install --reinstall python3-numpy)"

echo "$PROG: user $USER_NAME (groups video,gpio,dialout,i2c)" >&2
for group in video gpio dialout i2c; do
  getent group "$group" >/dev/null || groupadd --system "$group"
done
if ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/vendor-node --no-create-home --shell /usr/sbin/nologin \
          --groups video,gpio,dialout,i2c "$USER_NAME"
else
  usermod --append --groups video,gpio,dialout,i2c "$USER_NAME"
fi

echo "$PROG: venv in $PREFIX/venv (numpy $OS_NUMPY_VERSION and picamera2 from the OS)" >&2
mkdir -p "$PREFIX"
rm -rf "$PREFIX/src"
cp -a "$SRC" "$PREFIX/src"  # the firmware assets (model, manifest) travel with the package source
rm -rf "$PREFIX/src/.venv" "$PREFIX/src/.venv-tflite214" "$PREFIX/src/.git"
cp "$SRC/README.md" "$PREFIX/README.md"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$PREFIX/venv"
fi
printf 'numpy==%s\n' "$OS_NUMPY_VERSION" >"$PREFIX/os-numpy-constraint.txt"
pip_source=()
[ -z "$WHEELHOUSE" ] || pip_source=(--no-index --find-links "$WHEELHOUSE")
PIP=("$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "${pip_source[@]}")
"${PIP[@]}" -r "$REQUIREMENTS" -c "$PREFIX/os-numpy-constraint.txt" \
  || die "pip could not install deploy/pi-requirements.txt${WHEELHOUSE:+ from $WHEELHOUSE} (offline without a wheelhouse? build one with --build-wheelhouse)"
if [ "$WITH_HW_TESTS" = 1 ]; then
  "${PIP[@]}" "${HW_TEST_TOOLS[@]}" -c "$PREFIX/os-numpy-constraint.txt" || die "pip could not install pytest for the hardware tests"
fi
# the package itself: its dependencies are the pinned ones above, never re-resolved
"${PIP[@]}" --no-deps "$PREFIX/src" || die "pip could not install vendor-node from $PREFIX/src"
numpy_path=$("$PREFIX/venv/bin/python" -c 'import numpy; print(numpy.__file__)')
case "$numpy_path" in
  /usr/lib/python3/dist-packages/*) ;;
  *) die "the venv imports numpy from $numpy_path, not the OS's: picamera2 would break (run $PREFIX/venv/bin/pip uninstall numpy)" ;;
esac
kernel=$("$PREFIX/venv/bin/python" -c 'from vendor_node.hand import bit_search; print(bit_search.KERNEL)') \
  || die "vendor_node does not import in $PREFIX/venv"
echo "$PROG: palm-code 1:N kernel: $kernel" >&2
[ "${kernel#compiled}" != "$kernel" ] || echo "$PROG: warning: the compiled kernel was not built (apt install gcc python3-dev, then run this again)" >&2
if ! camera_check=$("$PREFIX/venv/bin/python" -c 'from picamera2 import Picamera2' 2>&1); then
  echo "$PROG: warning: picamera2 does not import in the venv: $(printf '%s\n' "$camera_check" | tail -n 1)" >&2
fi
ASSETS="$PREFIX/src/firmware_assets"  # the model and its manifest, found beside the package

echo "$PROG: config in $CONF_DIR" >&2
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.toml" ]; then
  sed -e "s#^assets_dir = .*#assets_dir = \"$ASSETS\"#" \
      -e "s#^port = \"/dev/ttyAMA0\"#port = \"/dev/vendor-mdb\"#" \
      "$SRC/firmware_assets/config.example.toml" >"$CONF_DIR/config.toml"
  chmod 0644 "$CONF_DIR/config.toml"
fi
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" /var/lib/vendor-node

echo "$PROG: udev rule /etc/udev/rules.d/99-vendor-mdb.rules (/dev/vendor-mdb)" >&2
if [ -n "$MDB_USB" ]; then
  udev_rule_for "$MDB_USB" >/etc/udev/rules.d/99-vendor-mdb.rules
else
  install -m 0644 "$SRC/deploy/99-vendor-mdb.rules" /etc/udev/rules.d/99-vendor-mdb.rules
fi
udevadm control --reload-rules 2>/dev/null && udevadm trigger --subsystem-match=tty 2>/dev/null || true

echo "$PROG: time sync: systemd-time-wait-sync (bounded wait), systemd units" >&2
install -d -m 0755 /etc/systemd/system/systemd-time-wait-sync.service.d
install -m 0644 "$SRC/deploy/time-wait-sync-bounded.conf" \
  /etc/systemd/system/systemd-time-wait-sync.service.d/vendor-node.conf
for unit in vendor-node.service vendor-node-sync.service vendor-node-sync.timer; do
  install -m 0644 "$SRC/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable systemd-time-wait-sync.service 2>/dev/null \
  || echo "$PROG: warning: systemd-time-wait-sync.service not found (install systemd-timesyncd); the unit starts without waiting for NTP" >&2
systemctl enable vendor-node.service vendor-node-sync.timer

cat >&2 <<MSG
$PROG: done. Next, as the technician:
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node provision --fleet-public-key FLEET.pem --unit-id UNIT-ID
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node accounts import BUNDLE
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node selftest     # exit code = number of failed checks
  sudo systemctl start vendor-node && journalctl -fu vendor-node
MSG
