#!/usr/bin/env bash
# Install vendor-node on a Raspberry Pi (Raspberry Pi OS bookworm or later), as root:
#   sudo scripts/install.sh
# - apt: python3-picamera2 and python3-lgpio (the camera and Pi 5 GPIO stacks come from the OS)
# - a venv at /opt/vendor-node/venv with --system-site-packages (so picamera2 is importable)
# - a dedicated system user `vendor-node` in the video, gpio and dialout groups
# - /etc/vendor-node/config.toml from the example (never overwritten), the systemd units, enabled
# Running it again upgrades the package and the units; state in /var/lib/vendor-node is kept.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/vendor-node
USER_NAME=vendor-node
CONF_DIR=/etc/vendor-node

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo $0)" >&2
  exit 2
fi

echo "install.sh: apt packages" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-picamera2 python3-lgpio >/dev/null

echo "install.sh: user $USER_NAME (groups video,gpio,dialout)" >&2
for group in video gpio dialout; do
  getent group "$group" >/dev/null || groupadd --system "$group"
done
if ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/vendor-node --no-create-home --shell /usr/sbin/nologin \
          --groups video,gpio,dialout "$USER_NAME"
else
  usermod --append --groups video,gpio,dialout "$USER_NAME"
fi

echo "install.sh: venv in $PREFIX/venv" >&2
mkdir -p "$PREFIX"
rm -rf "$PREFIX/src"
cp -a "$SRC" "$PREFIX/src"  # the firmware assets (model, manifest) travel with the package source
rm -rf "$PREFIX/src/.venv" "$PREFIX/src/.venv-tflite214" "$PREFIX/src/.git"
cp "$SRC/README.md" "$PREFIX/README.md"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$PREFIX/venv"
fi
"$PREFIX/venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
# lgpio (the Pi 5 GPIO backend) and picamera2 come from apt through --system-site-packages
"$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "$PREFIX/src"
# The model and its manifest must be found beside the package: point the config at them.
ASSETS="$PREFIX/src/firmware_assets"

echo "install.sh: config in $CONF_DIR" >&2
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.toml" ]; then
  sed -e "s#^assets_dir = .*#assets_dir = \"$ASSETS\"#" "$SRC/firmware_assets/config.example.toml" \
    > "$CONF_DIR/config.toml"
  chmod 0644 "$CONF_DIR/config.toml"
fi
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" /var/lib/vendor-node

echo "install.sh: systemd units" >&2
for unit in vendor-node.service vendor-node-sync.service vendor-node-sync.timer; do
  install -m 0644 "$SRC/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
systemctl enable vendor-node.service vendor-node-sync.timer

cat >&2 <<MSG
install.sh: done. Next, as the technician:
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node provision --fleet-public-key FLEET.pem --unit-id UNIT-ID
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node accounts import BUNDLE
  sudo -u $USER_NAME $PREFIX/venv/bin/vendor-node selftest
  sudo systemctl start vendor-node && journalctl -fu vendor-node
MSG
