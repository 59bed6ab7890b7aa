#!/usr/bin/env bash
# Prepare a vendor-node SD card on a technician's laptop (Linux), as root:
#   sudo scripts/flash.sh --image raspios.img[.xz] --sha256 HEX --device /dev/sdX \
#        [--unit-id ID --fleet-public-key FLEET.pem [--fleet-template-key KEY]] [--yes]
#
# What it does, in this order (nothing is written until every check has passed):
#  1. refuses a device that is not a whole block device, holds a mounted filesystem
#     (or active swap), or is the disk holding / ; `--allow-file` lets a regular file
#     stand in for the card (tests only);
#  2. checks the image file's sha256 against --sha256 (for .img.xz that is the hash of
#     the .xz file, as published next to Raspberry Pi OS downloads);
#  3. shows the device's size and model and asks to type its name (skip with --yes);
#  4. streams the image (`xz -dc` for .xz) through dd bs=4M conv=fsync (pv shows
#     progress when installed), syncs, then reads back exactly the written length and
#     compares its sha256 with the decompressed image's;
#  5. with --unit-id and --fleet-public-key: copies onto the boot partition (FAT, the
#     first partition) a folder `vendor-node/` holding fleet_public_key.pem,
#     fleet_template.key (when given), unit-id, and src/ (the vendor-node source:
#     `git archive HEAD`, so commit first; uncommitted edits are NOT copied). The
#     partition is written with mtools at its byte offset: no mount, no loop device.
#
# First boot on the Pi (Raspberry Pi OS mounts the boot partition at /boot/firmware):
#   sudo bash /boot/firmware/vendor-node/src/scripts/install.sh
#   sudo -u vendor-node /opt/vendor-node/venv/bin/vendor-node provision \
#        --fleet-public-key /boot/firmware/vendor-node/fleet_public_key.pem \
#        --unit-id "$(cat /boot/firmware/vendor-node/unit-id)" \
#        [--fleet-template-key /boot/firmware/vendor-node/fleet_template.key]
#   sudo rm -rf /boot/firmware/vendor-node   # provision copied the keys into the state
#                                            # dir; the FAT partition is readable by anyone
#                                            # who pulls the card, so delete them there
# Then `vendor-node accounts import BUNDLE`, `selftest`, `systemctl start vendor-node`.
#
# First-boot settings (what Raspberry Pi Imager's "OS customisation" writes), all given together:
#        --hostname H --user U --ssh-key KEY.pub --wifi-country CC --timezone Area/City
#        [--wifi-ssid SSID --wifi-psk-file FILE] [--camera auto|ov5647|imx219|imx477|imx708|imx296|ov9281]
#        [--mdb uart|usb] [--password-hash HASH] [--os auto|bookworm|trixie]
#  6. bookworm: firstrun.sh on the boot partition, run once via systemd.run= in cmdline.txt
#     (hostname, user with the SSH key and no password login unless --password-hash, Wi-Fi, time zone);
#     trixie: cloud-init's user-data, network-config and meta-data there instead. --os auto (default)
#     takes trixie when the image's boot partition already holds cloud-init files, else bookworm.
#     The Wi-Fi passphrase is read from a file and written only as its WPA PSK hash.
#     config.txt gets the camera (camera_auto_detect=1 or the named sensor's overlay) and, for
#     --mdb uart (default: an MDB HAT on GPIO 14/15), enable_uart=1 and dtoverlay=disable-bt
#     (dtparam=uart0=on on a Pi 5); cmdline.txt loses its serial console and gets the Wi-Fi country.
#  7. --wheelhouse DIR (from `scripts/install.sh --build-wheelhouse DIR --os ...`): copied to
#     vendor-node/wheelhouse, so on the Pi `install.sh --wheelhouse /boot/firmware/vendor-node/wheelhouse`
#     needs no internet.
#
# Exit codes: 0 card written (and provisioned), 1 refused or failed (the message says
# why), 2 bad arguments.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PROG=flash.sh

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "usage: $PROG --image IMG[.xz] --sha256 HEX --device /dev/sdX [--unit-id ID --fleet-public-key FLEET.pem [--fleet-template-key KEY]] [--hostname H --user U --ssh-key KEY.pub --wifi-country CC --timezone TZ [--wifi-ssid S --wifi-psk-file F] ...] [--wheelhouse DIR] [--yes] [--allow-file] (--help for all)" >&2; exit 2; }

IMAGE='' SHA256='' DEVICE='' UNIT_ID='' FLEET_KEY='' TEMPLATE_KEY='' ASSUME_YES=0 ALLOW_FILE=0
WHEELHOUSE='' OS_STYLE=auto FIRSTBOOT_ARGS=() FIRSTBOOT_REQUIRED=(--hostname --user --ssh-key --wifi-country --timezone)
declare -A FIRSTBOOT_GIVEN=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image|--sha256|--device|--unit-id|--fleet-public-key|--fleet-template-key|--wheelhouse|--os)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      case "$1" in
        --image) IMAGE=$2 ;; --sha256) SHA256=$2 ;; --device) DEVICE=$2 ;;
        --unit-id) UNIT_ID=$2 ;; --fleet-public-key) FLEET_KEY=$2 ;; --fleet-template-key) TEMPLATE_KEY=$2 ;;
        --wheelhouse) WHEELHOUSE=$2 ;; --os) OS_STYLE=$2 ;;
      esac
      shift 2 ;;
    --hostname|--user|--ssh-key|--wifi-country|--timezone|--wifi-ssid|--wifi-psk-file|--camera|--mdb|--password-hash)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      FIRSTBOOT_GIVEN[$1]=1
      case "$1" in --ssh-key|--wifi-psk-file) FIRSTBOOT_ARGS+=("$1" "$(readlink -f -- "$2" || printf '%s' "$2")") ;;
                   *) FIRSTBOOT_ARGS+=("$1" "$2") ;; esac
      shift 2 ;;
    --yes) ASSUME_YES=1; shift ;;
    --allow-file) ALLOW_FILE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

[ -n "$IMAGE" ] || usage_error "--image is required"
[ -n "$SHA256" ] || usage_error "--sha256 is required"
[ -n "$DEVICE" ] || usage_error "--device is required"
SHA256=$(printf '%s' "$SHA256" | tr 'A-F' 'a-f')
[[ "$SHA256" =~ ^[0-9a-f]{64}$ ]] || usage_error "--sha256 must be 64 hex digits, got '$SHA256'"
[ -f "$IMAGE" ] || usage_error "--image $IMAGE: no such file"
PROVISION=0
if [ -n "$UNIT_ID$FLEET_KEY$TEMPLATE_KEY" ]; then
  [ -n "$UNIT_ID" ] || usage_error "--unit-id is required when provisioning"
  [ -n "$FLEET_KEY" ] || usage_error "--fleet-public-key is required when provisioning"
  [[ "$UNIT_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
    || usage_error "--unit-id '$UNIT_ID': use 1-64 letters, digits, '.', '_' or '-'"
  [ -f "$FLEET_KEY" ] || usage_error "--fleet-public-key $FLEET_KEY: no such file"
  grep -q -- '-----BEGIN PUBLIC KEY-----' "$FLEET_KEY" \
    || usage_error "--fleet-public-key $FLEET_KEY: not a PEM public key (no BEGIN PUBLIC KEY line)"
  if [ -n "$TEMPLATE_KEY" ]; then [ -f "$TEMPLATE_KEY" ] || usage_error "--fleet-template-key $TEMPLATE_KEY: no such file"; fi
  PROVISION=1
fi
case "$OS_STYLE" in auto|bookworm|trixie) ;; *) usage_error "--os must be auto, bookworm or trixie, got '$OS_STYLE'" ;; esac
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || usage_error "--wheelhouse $WHEELHOUSE: no such folder"
  ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 || usage_error "--wheelhouse $WHEELHOUSE: holds no .whl files (build it with scripts/install.sh --build-wheelhouse)"
fi
FIRSTBOOT=0
if [ ${#FIRSTBOOT_ARGS[@]} -gt 0 ]; then
  for option in "${FIRSTBOOT_REQUIRED[@]}"; do
    [ -n "${FIRSTBOOT_GIVEN[$option]:-}" ] || usage_error "$option is required with the first-boot settings (${FIRSTBOOT_REQUIRED[*]})"
  done
  FIRSTBOOT=1
fi

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2"; }
need sha256sum coreutils
need dd coreutils
case "$IMAGE" in *.xz) need xz xz-utils ;; esac
if [ "$PROVISION" = 1 ]; then
  need mcopy mtools; need mmd mtools; need mdir mtools; need sfdisk fdisk; need git git
fi
if [ "$FIRSTBOOT" = 1 ] || [ -n "$WHEELHOUSE" ]; then
  need mcopy mtools; need mmd mtools; need mdir mtools; need sfdisk fdisk; need python3 python3
fi
if [ "$FIRSTBOOT" = 1 ]; then
  # every value checked now, on a scratch copy, so a typo never leaves a half-configured card
  CHECK_DIR=$(mktemp -d)
  printf 'console=serial0,115200 console=tty1 root=PARTUUID=0 rootwait\n' >"$CHECK_DIR/cmdline.txt"
  : >"$CHECK_DIR/config.txt"
  if ! check_output=$(python3 "$SRC/scripts/firstboot_files.py" --style bookworm --boot-dir "$CHECK_DIR" "${FIRSTBOOT_ARGS[@]}" 2>&1); then
    rm -rf "$CHECK_DIR"
    echo "$PROG: ${check_output##*error: }" >&2
    exit 2
  fi
  rm -rf "$CHECK_DIR"
fi

# ---- 1. the target: refuse anything that could be the wrong disk ----
IS_BLOCK=0
if [ -b "$DEVICE" ]; then
  IS_BLOCK=1
  need lsblk util-linux; need findmnt util-linux
  DEV_REAL=$(readlink -f "$DEVICE")
  dev_type=$(lsblk -dno TYPE "$DEV_REAL")
  [ "$dev_type" = disk ] || die "$DEVICE is a '$dev_type', not a whole disk: give the card itself (e.g. /dev/sdb, /dev/mmcblk0), not a partition"
  # Every mount point or swap on the disk or any of its partitions/holders.
  in_use=$(lsblk -nro NAME,MOUNTPOINTS "$DEV_REAL" 2>/dev/null || lsblk -nro NAME,MOUNTPOINT "$DEV_REAL")
  in_use=$(printf '%s\n' "$in_use" | awk 'NF > 1 { print "  /dev/" $1 " on " $2 }')
  [ -z "$in_use" ] || die "$DEVICE holds mounted filesystems (unmount them first, e.g. udisksctl unmount):
$in_use"
  root_source=$(findmnt -no SOURCE / || true)
  root_source=${root_source%%\[*}
  if [ -b "$root_source" ]; then
    # -s walks up from / through partitions, LVM and dm-crypt to the disks below it.
    while read -r name type; do
      if [ "$type" = disk ] && [ "/dev/$name" = "$DEV_REAL" ]; then
        die "$DEVICE is the disk holding / (this computer's system disk): refusing"
      fi
    done < <(lsblk -nrso NAME,TYPE "$root_source")
  fi
elif [ -e "$DEVICE" ] && [ ! -f "$DEVICE" ]; then
  die "$DEVICE is not a block device nor a regular file: refusing"
elif [ "$ALLOW_FILE" != 1 ]; then
  die "$DEVICE is not a block device (a regular file is accepted only with --allow-file, for tests)"
fi
if [ "$IS_BLOCK" = 0 ] && [ -e "$DEVICE" ] && [ "$(readlink -f "$DEVICE")" = "$(readlink -f "$IMAGE")" ]; then
  die "--device $DEVICE is the image itself"
fi

# ---- 2. the image: its published sha256 ----
echo "$PROG: checking sha256 of $IMAGE ..." >&2
actual_sha=$(sha256sum "$IMAGE" | cut -d' ' -f1)
[ "$actual_sha" = "$SHA256" ] || die "sha256 mismatch for $IMAGE: expected $SHA256, got $actual_sha (corrupt or wrong download; nothing written)"

decompress() { case "$IMAGE" in *.xz) xz -dc -- "$IMAGE" ;; *) cat -- "$IMAGE" ;; esac; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$PROVISION" = 1 ]; then
  # Build the source tree before writing so a missing git repo stops us early.
  git -C "$SRC" rev-parse --verify -q HEAD >/dev/null || die "$SRC: not a git repository with a commit (needed for the source tree)"
  if [ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]; then
    echo "$PROG: warning: $SRC has uncommitted changes; the card gets HEAD ($(git -C "$SRC" rev-parse --short HEAD)) only" >&2
  fi
  mkdir "$WORK/src"
  git -C "$SRC" archive --format=tar HEAD | tar -x -C "$WORK/src"
fi
if [ "$PROVISION" = 1 ] || [ "$FIRSTBOOT" = 1 ] || [ -n "$WHEELHOUSE" ]; then
  # The boot partition's offset, from the image's first MiB (the partition table), before any write.
  { decompress 2>/dev/null || true; } | head -c 1048576 >"$WORK/head.img"
  dump=$(sfdisk -d "$WORK/head.img" 2>/dev/null) || dump=''
  sector_size=$(printf '%s\n' "$dump" | sed -n 's/^sector-size: *\([0-9]*\).*/\1/p')
  first_start=$(printf '%s\n' "$dump" | sed -n 's/^[^:]* : *start= *\([0-9]*\),.*/\1/p' | head -n 1)
  [ -n "$first_start" ] || die "$IMAGE has no partition table, so no boot partition for the settings: nothing written"
  BOOT_OFFSET=$((first_start * ${sector_size:-512}))
fi

# ---- 3. the technician confirms the device ----
if [ "$IS_BLOCK" = 1 ]; then
  description=$(lsblk -dno SIZE,MODEL,TRAN "$DEV_REAL" | sed 's/  */ /g')
else
  description="regular file (--allow-file)"
fi
echo "$PROG: about to ERASE $DEVICE: $description" >&2
if [ "$ASSUME_YES" != 1 ]; then
  [ -t 0 ] || die "no terminal to confirm on: pass --yes to write without confirming"
  read -r -p "Type the device name ($DEVICE) to continue: " answer
  [ "$answer" = "$DEVICE" ] || die "confirmation did not match: nothing written"
fi

# ---- 4. write, then read back ----
dd_target=(of="$DEVICE" conv=fsync)  # a stand-in file (--allow-file) ends up exactly the image's length
mkfifo "$WORK/to_sha" "$WORK/to_len"
sha256sum <"$WORK/to_sha" | cut -d' ' -f1 >"$WORK/image.sha256" & sha_pid=$!
wc -c <"$WORK/to_len" >"$WORK/image.length" & len_pid=$!
echo "$PROG: writing $IMAGE to $DEVICE ..." >&2
if command -v pv >/dev/null 2>&1; then
  decompress | tee "$WORK/to_sha" "$WORK/to_len" | pv | dd "${dd_target[@]}" bs=4M iflag=fullblock status=none
else
  decompress | tee "$WORK/to_sha" "$WORK/to_len" | dd "${dd_target[@]}" bs=4M iflag=fullblock status=progress
fi
wait "$sha_pid" "$len_pid"
sync
image_sha=$(cat "$WORK/image.sha256")
image_length=$(tr -d ' ' <"$WORK/image.length")
[ "$image_length" -gt 0 ] || die "$IMAGE decompressed to nothing"
if [ "$IS_BLOCK" = 1 ]; then
  command -v blockdev >/dev/null 2>&1 && blockdev --flushbufs "$DEVICE"  # read the card, not the page cache
fi
echo "$PROG: reading back $image_length bytes ..." >&2
written_sha=$(head -c "$image_length" -- "$DEVICE" | sha256sum | cut -d' ' -f1)
[ "$written_sha" = "$image_sha" ] || die "read-back mismatch on $DEVICE: image $image_sha, device $written_sha (bad card or reader; do not use it)"
echo "$PROG: written and verified: $image_length bytes, sha256 $image_sha" >&2

# ---- 5. the provisioning bundle on the boot partition ----
if [ "$PROVISION" = 1 ]; then
  BOOT="$DEVICE@@$BOOT_OFFSET"  # mtools writes the FAT at its byte offset: no mount, no partition re-read
  export MTOOLS_SKIP_CHECK=1
  mdir -i "$BOOT" :: >/dev/null 2>&1 || die "$DEVICE: the first partition is not a FAT filesystem (not a Raspberry Pi OS image?)"
  if mdir -i "$BOOT" ::/vendor-node >/dev/null 2>&1; then
    die "$DEVICE: the boot partition already holds vendor-node/ (the image is not a stock OS image)"
  fi
  echo "$PROG: copying the provisioning bundle to vendor-node/ on the boot partition ..." >&2
  printf '%s\n' "$UNIT_ID" >"$WORK/unit-id"
  mmd -i "$BOOT" ::/vendor-node
  mcopy -i "$BOOT" "$FLEET_KEY" ::/vendor-node/fleet_public_key.pem
  [ -z "$TEMPLATE_KEY" ] || mcopy -i "$BOOT" "$TEMPLATE_KEY" ::/vendor-node/fleet_template.key
  mcopy -i "$BOOT" "$WORK/unit-id" ::/vendor-node/unit-id
  mcopy -s -i "$BOOT" "$WORK/src" ::/vendor-node/src
  sync
  echo "$PROG: provisioned unit $UNIT_ID. On first boot, see the steps at the top of $0." >&2
fi
if [ "$FIRSTBOOT" = 1 ] || [ -n "$WHEELHOUSE" ]; then
  BOOT="$DEVICE@@$BOOT_OFFSET"
  export MTOOLS_SKIP_CHECK=1
  mdir -i "$BOOT" :: >/dev/null 2>&1 || die "$DEVICE: the first partition is not a FAT filesystem (not a Raspberry Pi OS image?)"
fi
if [ "$FIRSTBOOT" = 1 ]; then
  mkdir "$WORK/boot"
  for name in cmdline.txt config.txt; do
    mcopy -n -i "$BOOT" "::/$name" "$WORK/boot/$name" 2>/dev/null \
      || die "$DEVICE: the boot partition has no $name (not a Raspberry Pi OS image?)"
  done
  if [ "$OS_STYLE" = auto ]; then
    OS_STYLE=bookworm
    for name in user-data meta-data network-config; do
      if mdir -b -i "$BOOT" "::/$name" >/dev/null 2>&1; then OS_STYLE=trixie; fi
    done
    echo "$PROG: first-boot style $OS_STYLE (cloud-init files on the image: $([ "$OS_STYLE" = trixie ] && echo yes || echo no); --os overrides)" >&2
  fi
  written=$(python3 "$SRC/scripts/firstboot_files.py" --style "$OS_STYLE" --boot-dir "$WORK/boot" "${FIRSTBOOT_ARGS[@]}") \
    || die "could not prepare the first-boot settings"
  for name in $written; do
    mcopy -o -i "$BOOT" "$WORK/boot/$name" "::/$name" || die "$DEVICE: could not write $name to the boot partition"
  done
  sync
  echo "$PROG: first-boot settings ($OS_STYLE): $written" >&2
fi
if [ -n "$WHEELHOUSE" ]; then
  mdir -i "$BOOT" ::/vendor-node >/dev/null 2>&1 || mmd -i "$BOOT" ::/vendor-node
  mmd -i "$BOOT" ::/vendor-node/wheelhouse
  for wheel in "$WHEELHOUSE"/*; do
    mcopy -i "$BOOT" "$wheel" "::/vendor-node/wheelhouse/" \
      || die "$DEVICE: could not copy $(basename "$wheel") to the boot partition (full? a wheelhouse is ~55 MB)"
  done
  sync
  echo "$PROG: wheelhouse copied: on the Pi, install.sh --wheelhouse /boot/firmware/vendor-node/wheelhouse" >&2
fi
echo "$PROG: done; the card can be removed." >&2
