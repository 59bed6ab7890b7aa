#!/usr/bin/env python3
"""The first-boot settings Raspberry Pi Imager writes onto a card's boot partition, for flash.sh.

Why a Python helper: the settings travel inside a shell script (bookworm) or YAML (trixie), and
an SSID or hostname with a quote in it must not break either; Python quotes both exactly and
hashes the Wi-Fi passphrase (WPA PSK, PBKDF2) so the plain passphrase never lands on the card.
Standard library only: it runs on the technician's laptop, not on the unit.

  bookworm: firstrun.sh, run once by systemd.run= on the kernel command line (Imager's way), calling
            raspberrypi-sys-mods' imager_custom and userconf-pi; it removes itself and the hook.
  trixie:   cloud-init NoCloud files user-data, network-config and meta-data (Imager 2's way).
  both:     config.txt lines for the camera and the MDB adapter's UART (enable_uart, disable-bt),
            the Wi-Fi country on the kernel command line, no serial console on the UART.

usage: firstboot_files.py --style bookworm|trixie --boot-dir DIR --hostname H --user U --ssh-key FILE
           [--wifi-ssid S --wifi-psk-file F] --wifi-country CC --timezone Area/City
           [--camera auto|SENSOR] [--mdb uart|usb] [--password-hash HASH]
Reads and rewrites DIR/cmdline.txt and DIR/config.txt, writes the style's files into DIR.
Exit 2 with a message naming the bad value.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

CONFIG_MARK = "# vendor-node (scripts/flash.sh): camera and MDB adapter UART"
CAMERAS = ("auto", "ov5647", "imx219", "imx477", "imx708", "imx296", "ov9281")
# the groups Imager gives the first user, so the technician can read the camera, GPIO and serial port
USER_GROUPS = "users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo"


def _matching(pattern: str, what: str):
    def check(text: str) -> str:
        if not re.fullmatch(pattern, text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {what}")
        return text
    return check


def ssh_public_key(path: str) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: cannot read: {exc}") from None
    keys = [line for line in lines if re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$", line)]
    if not keys or len(keys) != len(lines):
        raise argparse.ArgumentTypeError(f"{path}: not an OpenSSH public key file (expected lines like 'ssh-ed25519 AAAA... "
                                         "comment'; is it the private key?)")
    return "\n".join(keys)


def wifi_psk(passphrase: str, ssid: str) -> str:
    """The 64-hex WPA PSK for a passphrase (what wpa_passphrase prints), so the passphrase stays off the card."""
    if not 8 <= len(passphrase) <= 63 or not passphrase.isprintable():
        raise argparse.ArgumentTypeError("the Wi-Fi passphrase must be 8 to 63 printable characters")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="firstboot_files.py", description=__doc__.splitlines()[0])
    p.add_argument("--style", choices=["bookworm", "trixie"], required=True)
    p.add_argument("--boot-dir", type=Path, required=True)
    p.add_argument("--hostname", required=True, type=_matching(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "hostname"))
    p.add_argument("--user", required=True, type=_matching(r"[a-z_][a-z0-9_-]{0,31}", "user name"))
    p.add_argument("--ssh-key", required=True, type=ssh_public_key)
    p.add_argument("--wifi-ssid", type=_matching(r"[^\x00-\x1f\x7f]{1,32}", "Wi-Fi SSID (1-32 characters)"))
    p.add_argument("--wifi-psk-file", type=Path)
    p.add_argument("--wifi-country", required=True, type=_matching(r"[A-Z]{2}", "Wi-Fi country (two capitals, e.g. GB)"))
    p.add_argument("--timezone", required=True,
                   type=_matching(r"(UTC|[A-Z][A-Za-z_+-]*(/[A-Za-z0-9_+-]+){1,2})", "time zone (Area/City, e.g. Europe/Berlin)"))
    p.add_argument("--camera", default="auto", choices=CAMERAS)
    p.add_argument("--mdb", default="uart", choices=["uart", "usb"])
    p.add_argument("--password-hash", default="*",
                   type=_matching(r"\*|\$(1|5|6|y|2[aby])\$[./A-Za-z0-9$=,]+", "password hash (openssl passwd -6)"))
    args = p.parse_args(argv)
    if bool(args.wifi_ssid) != bool(args.wifi_psk_file):
        p.error("--wifi-ssid and --wifi-psk-file go together")
    args.psk = None
    if args.wifi_psk_file:
        try:
            passphrase = args.wifi_psk_file.read_text(encoding="utf-8").rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            p.error(f"--wifi-psk-file {args.wifi_psk_file}: cannot read: {exc}")
        try:
            args.psk = wifi_psk(passphrase, args.wifi_ssid)
        except argparse.ArgumentTypeError as exc:
            p.error(f"--wifi-psk-file {args.wifi_psk_file}: {exc}")
    for name in ("cmdline.txt", "config.txt"):
        if not (args.boot_dir / name).is_file():
            p.error(f"{name} is not on the boot partition: not a Raspberry Pi OS image?")
    return args


def firstrun_script(args) -> str:
    """bookworm: Imager's firstrun.sh, with its fallbacks for images without imager_custom."""
    q = shlex.quote
    key_lines = args.ssh_key
    lines = [
        "#!/bin/bash",
        "# Written by vendor-node scripts/flash.sh like Raspberry Pi Imager's; run once at first boot, then removed.",
        "set +e",
        "BOOT=/boot/firmware; [ -f $BOOT/cmdline.txt ] || BOOT=/boot",
        "CURRENT_HOSTNAME=$(tr -d ' \\t\\n\\r' </etc/hostname)",
        "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname {q(args.hostname)}",
        "else",
        f"   echo {q(args.hostname)} >/etc/hostname",
        f"   sed -i \"s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t\"{q(args.hostname)}\"/g\" /etc/hosts",
        "fi",
        "FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)",
        "FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)",
        "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        f"   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k {q(key_lines)}",
        "else",
        "   install -o \"$FIRSTUSER\" -m 700 -d \"$FIRSTUSERHOME/.ssh\"",
        f"   install -o \"$FIRSTUSER\" -m 600 <(printf '%s\\n' {q(key_lines)}) \"$FIRSTUSERHOME/.ssh/authorized_keys\"",
        "   echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config",
        "   systemctl enable ssh",
        "fi",
        "if [ -f /usr/lib/userconf-pi/userconf ]; then",
        f"   /usr/lib/userconf-pi/userconf {q(args.user)} {q(args.password_hash)}",
        "else",
        f"   echo \"$FIRSTUSER:\"{q(args.password_hash)} | chpasswd -e",
        f"   if [ \"$FIRSTUSER\" != {q(args.user)} ]; then",
        f"      usermod -l {q(args.user)} \"$FIRSTUSER\"",
        f"      usermod -m -d /home/{args.user} {q(args.user)}",
        f"      groupmod -n {q(args.user)} \"$FIRSTUSER\"",
        "   fi",
        "fi",
    ]
    if args.psk:
        lines += [
            "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
            f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan {q(args.wifi_ssid)} {q(args.psk)} {q(args.wifi_country)}",
            "else",
            "   cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'WPAEOF'",
            f"country={args.wifi_country}",
            "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev",
            "ap_scan=1",
            "update_config=1",
            "network={",
            f"\tssid={json.dumps(args.wifi_ssid)}",
            f"\tpsk={args.psk}",
            "}",
            "WPAEOF",
            "   chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf",
            "   rfkill unblock wifi",
            "   for filename in /var/lib/systemd/rfkill/*:wlan ; do echo 0 > \"$filename\"; done",
            "fi",
        ]
    lines += [
        "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone {q(args.timezone)}",
        "else",
        "   rm -f /etc/localtime",
        f"   echo {q(args.timezone)} >/etc/timezone",
        "   dpkg-reconfigure -f noninteractive tzdata",
        "fi",
        "rm -f $BOOT/firstrun.sh",
        "sed -i 's| systemd.run.*||g' $BOOT/cmdline.txt",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def cloud_init_files(args) -> dict[str, str]:
    """trixie: cloud-init NoCloud user-data, network-config and meta-data, as Imager 2 writes them."""
    s = json.dumps  # a JSON string is a valid YAML double-quoted scalar: exact quoting for any SSID
    keys = "".join(f"  - {s(key)}\n" for key in args.ssh_key.splitlines())
    user_data = (
        "#cloud-config\n"
        "# Written by vendor-node scripts/flash.sh (cloud-init, as Raspberry Pi Imager writes it); read at first boot.\n"
        f"hostname: {s(args.hostname)}\n"
        "manage_etc_hosts: true\n"
        f"timezone: {s(args.timezone)}\n"
        "users:\n"
        f"- name: {s(args.user)}\n"
        f"  groups: {USER_GROUPS}\n"
        "  shell: /bin/bash\n"
        f"  lock_passwd: {'true' if args.password_hash == '*' else 'false'}\n"
        + (f"  passwd: {s(args.password_hash)}\n" if args.password_hash != "*" else "")
        + "  ssh_authorized_keys:\n" + keys +
        "  sudo: ALL=(ALL) NOPASSWD:ALL\n"
        "enable_ssh: true\n"
        "ssh_pwauth: false\n"
    )
    network = "network:\n  version: 2\n"
    if args.psk:
        network += (
            "  wifis:\n"
            "    renderer: NetworkManager\n"
            "    wlan0:\n"
            "      dhcp4: true\n"
            f"      regulatory-domain: {s(args.wifi_country)}\n"
            "      access-points:\n"
            f"        {s(args.wifi_ssid)}:\n"
            f"          password: {s(args.psk)}\n"
            "      optional: true\n"
        )
    meta = f"instance-id: vendor-node-{args.hostname}\nlocal-hostname: {args.hostname}\n"
    return {"user-data": user_data, "network-config": network, "meta-data": meta}


def config_txt(text: str, camera: str, mdb: str) -> str:
    """config.txt with the vendor-node block (camera, UART) appended once, replacing an earlier one."""
    text = text.split("\n" + CONFIG_MARK)[0].rstrip("\n") + "\n"
    if camera != "auto":  # a named sensor: no probing, its overlay (auto-detect would load another)
        text = re.sub(r"(?m)^camera_auto_detect=1\s*$", "camera_auto_detect=0", text)
    block = ["", CONFIG_MARK, "[all]"]
    block += ["camera_auto_detect=1"] if camera == "auto" else ["camera_auto_detect=0", f"dtoverlay={camera}"]
    if mdb == "uart":
        block += ["# the adapter on GPIO 14/15 is /dev/ttyAMA0: the PL011 UART, taken from Bluetooth on Pi 3, 4, Zero 2 W",
                  "enable_uart=1", "dtoverlay=disable-bt", "[pi5]", "dtparam=uart0=on", "[all]"]
    return text + "\n".join(block) + "\n"


def cmdline_txt(text: str, style: str, country: str, mdb: str) -> str:
    """cmdline.txt (one line): Wi-Fi country, no login console on the adapter's UART, the bookworm first-run hook."""
    words = [w for w in text.split() if not w.startswith(("cfg80211.ieee80211_regdom=", "systemd.run",
                                                          "systemd.unit=kernel-command-line"))]
    if mdb == "uart":
        words = [w for w in words if not re.fullmatch(r"console=(serial0|ttyAMA0|ttyS0),\d+", w)]
    words.append(f"cfg80211.ieee80211_regdom={country}")
    if style == "bookworm":
        words += ["systemd.run=/boot/firmware/firstrun.sh", "systemd.run_success_action=reboot",
                  "systemd.unit=kernel-command-line.target"]
    return " ".join(words) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    boot = args.boot_dir
    (boot / "cmdline.txt").write_text(cmdline_txt((boot / "cmdline.txt").read_text(), args.style, args.wifi_country,
                                                  args.mdb))
    (boot / "config.txt").write_text(config_txt((boot / "config.txt").read_text(), args.camera, args.mdb))
    if args.style == "bookworm":
        (boot / "firstrun.sh").write_text(firstrun_script(args))
        written = ["firstrun.sh"]
    else:
        written = []
        for name, content in cloud_init_files(args).items():
            (boot / name).write_text(content)
            written.append(name)
    print(" ".join(["cmdline.txt", "config.txt", *written]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
