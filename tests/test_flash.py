"""scripts/flash.sh on a tiny disk image in tmp: it checks before it writes, writes byte-identical data,
and puts the provisioning bundle on the FAT boot partition. Never touches a real block device:
the one case that names the system disk passes a wrong sha256, no --yes and no terminal as well,
and asserts the refusal came before the image was even read."""
from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FLASH = Path(__file__).resolve().parents[1] / "scripts" / "flash.sh"
IMAGE_BYTES = 8 * 1024 * 1024
BOOT_START_SECTOR = 2048  # 1 MiB, as Raspberry Pi OS images lay out their boot partition
FLEET_PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"


def _missing_tools() -> list[str]:
    wanted = ["sfdisk", "mcopy", "mmd", "mdir", "xz", "git"]
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if shutil.which("mkfs.vfat") is None and shutil.which("mformat") is None:
        missing.append("mkfs.vfat or mformat")
    return missing


pytestmark = pytest.mark.skipif(bool(_missing_tools()),
                                reason=f"flash.sh test needs: {', '.join(_missing_tools())} "
                                       "(apt install fdisk mtools dosfstools xz-utils git)")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def _checked(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = _run(*args, cwd=cwd)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result


def _boot(image: Path) -> str:
    return f"{image}@@{BOOT_START_SECTOR * 512}"


@pytest.fixture(scope="module")
def disk_image(tmp_path_factory) -> dict:
    """An 8 MiB disk image (MBR, one FAT partition from 1 MiB, a marker file on it), plain and .xz."""
    tmp = tmp_path_factory.mktemp("flash_image")
    image = tmp / "os.img"
    # not all zeros, so a write that skipped blocks would show in the comparison
    image.write_bytes(hashlib.sha256(b"seed").digest() * (IMAGE_BYTES // 32))
    layout = f"label: dos\nstart={BOOT_START_SECTOR}, type=c\n"
    result = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)], input=layout,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sectors = IMAGE_BYTES // 512 - BOOT_START_SECTOR
    if shutil.which("mkfs.vfat"):
        _checked("mkfs.vfat", "--offset", str(BOOT_START_SECTOR), "-n", "BOOTFS", str(image), str(sectors // 2))
    else:
        _checked("mformat", "-i", _boot(image), "-T", str(sectors), "-v", "BOOTFS", "::")
    (tmp / "config.txt").write_text("arm_64bit=1\n")
    _checked("mcopy", "-i", _boot(image), str(tmp / "config.txt"), "::/config.txt")
    data = image.read_bytes()
    compressed = tmp / "os.img.xz"
    compressed.write_bytes(lzma.compress(data, preset=0))
    return {"plain": image, "xz": compressed, "data": data,
            "sha_plain": hashlib.sha256(data).hexdigest(),
            "sha_xz": hashlib.sha256(compressed.read_bytes()).hexdigest()}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A small committed repo holding flash.sh, so the source tree copied to the card is known exactly."""
    repo = tmp_path_factory.mktemp("checkout")
    (repo / "scripts").mkdir()
    shutil.copy2(FLASH, repo / "scripts" / "flash.sh")
    shutil.copy2(FLASH.with_name("firstboot_files.py"), repo / "scripts" / "firstboot_files.py")
    (repo / "scripts" / "install.sh").write_text("#!/usr/bin/env bash\necho install\n")
    (repo / "README.md").write_text("vendor_node\n")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
    _checked(*git, "init", "-q", cwd=repo)
    _checked(*git, "add", ".", cwd=repo)
    _checked(*git, "commit", "-q", "-m", "test tree", cwd=repo)
    return repo / "scripts" / "flash.sh"


def _read_fat_file(image: Path, path: str, tmp: Path) -> bytes:
    out = tmp / ("read_" + path.replace("/", "_"))
    _checked("mcopy", "-n", "-i", _boot(image), f"::{path}", str(out))
    return out.read_bytes()


def test_wrong_sha256_is_refused_and_nothing_written(disk_image, tmp_path):
    target = tmp_path / "card.bin"
    result = _run("bash", str(FLASH), "--image", str(disk_image["xz"]), "--sha256", "0" * 64,
                  "--device", str(target), "--allow-file", "--yes")
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr and "nothing written" in result.stderr
    assert not target.exists()


def test_regular_file_without_allow_file_is_refused(disk_image, tmp_path):
    target = tmp_path / "card.bin"
    target.write_bytes(b"untouched")
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", disk_image["sha_plain"],
                  "--device", str(target), "--yes")
    assert result.returncode == 1 and "not a block device" in result.stderr
    assert target.read_bytes() == b"untouched"


def test_bad_arguments_exit_2(disk_image, tmp_path):
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", "xyz",
                  "--device", str(tmp_path / "card.bin"), "--allow-file", "--yes")
    assert result.returncode == 2 and "64 hex digits" in result.stderr
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", disk_image["sha_plain"],
                  "--device", str(tmp_path / "card.bin"), "--allow-file", "--yes",
                  "--unit-id", "unit-1", "--fleet-public-key", str(tmp_path / "missing.pem"))
    assert result.returncode == 2 and "missing.pem" in result.stderr
    assert not (tmp_path / "card.bin").exists()


def test_plain_image_is_written_byte_identical(disk_image, tmp_path):
    target = tmp_path / "card.bin"
    target.write_bytes(b"\xff" * (IMAGE_BYTES + 4096))  # a stale, longer card image is replaced
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", disk_image["sha_plain"].upper(),
                  "--device", str(target), "--allow-file", "--yes")
    assert result.returncode == 0, result.stderr
    assert "written and verified" in result.stderr
    assert target.read_bytes() == disk_image["data"]


def test_xz_image_is_written_and_provisioned(disk_image, checkout, tmp_path):
    target = tmp_path / "card.bin"
    fleet = tmp_path / "fleet.pem"
    fleet.write_text(FLEET_PEM)
    template_key = tmp_path / "template.key"
    template_key.write_bytes(os.urandom(32))
    result = _run("bash", str(checkout), "--image", str(disk_image["xz"]), "--sha256", disk_image["sha_xz"],
                  "--device", str(target), "--allow-file", "--yes", "--unit-id", "snack-07",
                  "--fleet-public-key", str(fleet), "--fleet-template-key", str(template_key))
    assert result.returncode == 0, result.stderr
    assert f"sha256 {disk_image['sha_plain']}" in result.stderr  # the read-back matched the decompressed image
    written = target.read_bytes()
    # only the FAT partition changed; everything before it (the partition table) is the image's
    assert len(written) == IMAGE_BYTES
    assert written[:BOOT_START_SECTOR * 512] == disk_image["data"][:BOOT_START_SECTOR * 512]
    assert _read_fat_file(target, "/config.txt", tmp_path) == b"arm_64bit=1\n"
    assert _read_fat_file(target, "/vendor-node/unit-id", tmp_path) == b"snack-07\n"
    assert _read_fat_file(target, "/vendor-node/fleet_public_key.pem", tmp_path) == FLEET_PEM.encode()
    assert _read_fat_file(target, "/vendor-node/fleet_template.key", tmp_path) == template_key.read_bytes()
    assert _read_fat_file(target, "/vendor-node/src/scripts/install.sh", tmp_path).startswith(b"#!/usr/bin/env bash")
    assert _read_fat_file(target, "/vendor-node/src/scripts/flash.sh", tmp_path) == FLASH.read_bytes()
    listing = _checked("mdir", "-b", "-i", _boot(target), "::/vendor-node/src").stdout
    assert ".git" not in listing  # git archive: tracked files only


def test_provisioning_an_image_without_fat_partition_fails_clearly(tmp_path, checkout):
    image = tmp_path / "raw.img"
    image.write_bytes(b"\0" * 1024 * 1024)
    fleet = tmp_path / "fleet.pem"
    fleet.write_text(FLEET_PEM)
    result = _run("bash", str(checkout), "--image", str(image), "--sha256", hashlib.sha256(image.read_bytes()).hexdigest(),
                  "--device", str(tmp_path / "card.bin"), "--allow-file", "--yes",
                  "--unit-id", "snack-07", "--fleet-public-key", str(fleet))
    assert result.returncode == 1 and "no partition table" in result.stderr and "nothing written" in result.stderr
    assert not (tmp_path / "card.bin").exists()


def _system_disk() -> str | None:
    if shutil.which("findmnt") is None or shutil.which("lsblk") is None:
        return None
    source = subprocess.run(["findmnt", "-no", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    source = source.split("[")[0]
    if not source or not Path(source).is_block_device():
        return None
    parents = subprocess.run(["lsblk", "-nrso", "NAME,TYPE", source], capture_output=True, text=True).stdout
    disks = [line.split()[0] for line in parents.splitlines() if line.split()[1:] == ["disk"]]
    return f"/dev/{disks[0]}" if disks else None


def test_the_system_disk_is_refused_before_anything_is_read(disk_image):
    disk = _system_disk()
    if disk is None:
        pytest.skip("/ is not on a block device here (container overlay?)")
    # Triple guard: wrong sha256, no --yes and no terminal, so even a broken device check could not write.
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", "0" * 64, "--device", disk)
    assert result.returncode == 1
    assert "refusing" in result.stderr or "mounted" in result.stderr, result.stderr
    assert "checking sha256" not in result.stderr  # refused before the image was even looked at


def test_without_yes_and_without_a_terminal_nothing_is_written(disk_image, tmp_path):
    target = tmp_path / "card.bin"
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", disk_image["sha_plain"],
                  "--device", str(target), "--allow-file")
    assert result.returncode == 1 and "pass --yes" in result.stderr
    assert not target.exists()


def test_a_character_device_is_refused_even_with_allow_file(disk_image):
    result = _run("bash", str(FLASH), "--image", str(disk_image["plain"]), "--sha256", disk_image["sha_plain"],
                  "--device", "/dev/null", "--allow-file", "--yes")
    assert result.returncode == 1 and "not a block device nor a regular file" in result.stderr


# --- first-boot settings, as Raspberry Pi Imager writes them (bookworm: firstrun.sh, trixie: cloud-init) ---
STOCK_CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet\n"
STOCK_CONFIG = "dtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\narm_64bit=1\n[all]\n"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE tech@laptop\n"
PASSPHRASE = "snacks 'n' quotes"
SSID = 'Office "Kitchen" Wi-Fi'


def _boot_image(tmp: Path, files: dict[str, str]) -> tuple[Path, str]:
    """An 8 MiB card image whose FAT boot partition holds ``files`` (a Pi OS release's stock boot files)."""
    image = tmp / "pios.img"
    image.write_bytes(b"\0" * IMAGE_BYTES)
    result = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
                            input=f"label: dos\nstart={BOOT_START_SECTOR}, type=c\n", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    sectors = IMAGE_BYTES // 512 - BOOT_START_SECTOR
    if shutil.which("mkfs.vfat"):
        _checked("mkfs.vfat", "--offset", str(BOOT_START_SECTOR), "-n", "BOOTFS", str(image), str(sectors // 2))
    else:
        _checked("mformat", "-i", _boot(image), "-T", str(sectors), "-v", "BOOTFS", "::")
    for name, content in files.items():
        (tmp / name).write_text(content)
        _checked("mcopy", "-i", _boot(image), str(tmp / name), f"::/{name}")
    return image, hashlib.sha256(image.read_bytes()).hexdigest()


def _first_boot_args(tmp: Path, *extra: str) -> list[str]:
    (tmp / "tech.pub").write_text(SSH_KEY)
    (tmp / "wifi.psk").write_text(PASSPHRASE + "\n")
    return ["--hostname", "snack-07", "--user", "tech", "--ssh-key", str(tmp / "tech.pub"),
            "--wifi-ssid", SSID, "--wifi-psk-file", str(tmp / "wifi.psk"), "--wifi-country", "DE",
            "--timezone", "Europe/Berlin", *extra]


def _flash_settings(tmp: Path, image: Path, sha: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    card = tmp / "card.bin"
    result = _run("bash", str(FLASH), "--image", str(image), "--sha256", sha, "--device", str(card),
                  "--allow-file", "--yes", *_first_boot_args(tmp), *extra)
    return result, card


def _psk() -> str:
    return hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), SSID.encode(), 4096, 32).hex()


def test_bookworm_card_gets_imagers_firstrun_and_the_camera_and_uart_lines(tmp_path):
    image, sha = _boot_image(tmp_path, {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG})
    result, card = _flash_settings(tmp_path, image, sha)
    assert result.returncode == 0, result.stderr
    assert "first-boot style bookworm" in result.stderr
    cmdline = _read_fat_file(card, "/cmdline.txt", tmp_path).decode()
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n")  # still one line
    words = cmdline.split()
    # where the bookworm first boot runs it: systemd.run on the kernel command line, then reboot
    assert words[-3:] == ["systemd.run=/boot/firmware/firstrun.sh", "systemd.run_success_action=reboot",
                          "systemd.unit=kernel-command-line.target"]
    assert "cfg80211.ieee80211_regdom=DE" in words
    assert "console=serial0,115200" not in words and "console=tty1" in words  # no login shell on the MDB UART
    assert "root=PARTUUID=4e639091-02" in words
    config = _read_fat_file(card, "/config.txt", tmp_path).decode()
    assert config.startswith(STOCK_CONFIG)
    for line in ("camera_auto_detect=1", "enable_uart=1", "dtoverlay=disable-bt", "dtparam=uart0=on"):
        assert line in config.splitlines()
    firstrun = _read_fat_file(card, "/firstrun.sh", tmp_path).decode()
    syntax = subprocess.run(["bash", "-n"], input=firstrun, capture_output=True, text=True, timeout=60)
    assert syntax.returncode == 0, syntax.stderr
    assert "imager_custom set_hostname snack-07" in firstrun
    assert f"imager_custom enable_ssh -k '{SSH_KEY.strip()}'" in firstrun
    assert "/usr/lib/userconf-pi/userconf tech '*'" in firstrun  # key only: no password login
    assert f"imager_custom set_wlan 'Office \"Kitchen\" Wi-Fi' {_psk()} DE" in firstrun
    assert PASSPHRASE not in firstrun and "snacks" not in firstrun  # only the WPA PSK hash is on the card
    assert "imager_custom set_timezone Europe/Berlin" in firstrun
    assert "rm -f $BOOT/firstrun.sh" in firstrun and "sed -i 's| systemd.run.*||g' $BOOT/cmdline.txt" in firstrun
    listing = _checked("mdir", "-b", "-i", _boot(card), "::/").stdout
    assert "user-data" not in listing  # one style per card


def test_trixie_card_gets_cloud_init_files_where_its_first_boot_reads_them(tmp_path):
    stock = {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG, "meta-data": "instance-id: rpios\n",
             "user-data": "#cloud-config\n", "network-config": "network:\n  version: 2\n"}
    image, sha = _boot_image(tmp_path, stock)
    result, card = _flash_settings(tmp_path, image, sha, "--camera", "imx708", "--mdb", "usb")
    assert result.returncode == 0, result.stderr
    assert "first-boot style trixie" in result.stderr
    user_data = _read_fat_file(card, "/user-data", tmp_path).decode()
    assert user_data.startswith("#cloud-config\n")
    assert 'hostname: "snack-07"' in user_data and 'timezone: "Europe/Berlin"' in user_data
    assert '- name: "tech"' in user_data and "lock_passwd: true" in user_data and "ssh_pwauth: false" in user_data
    assert f'  ssh_authorized_keys:\n  - "{SSH_KEY.strip()}"\n' in user_data
    network = _read_fat_file(card, "/network-config", tmp_path).decode()
    assert 'regulatory-domain: "DE"' in network
    assert '"Office \\"Kitchen\\" Wi-Fi":' in network and f'password: "{_psk()}"' in network
    assert PASSPHRASE not in network
    assert "instance-id: vendor-node-snack-07" in _read_fat_file(card, "/meta-data", tmp_path).decode()
    words = _read_fat_file(card, "/cmdline.txt", tmp_path).decode().split()
    assert not any(word.startswith("systemd.run") for word in words)  # cloud-init needs no hook
    assert "console=serial0,115200" in words  # --mdb usb: the UART stays as it was
    config = _read_fat_file(card, "/config.txt", tmp_path).decode().splitlines()
    assert "dtoverlay=imx708" in config and "camera_auto_detect=1" not in config
    assert "enable_uart=1" not in config
    listing = _checked("mdir", "-b", "-i", _boot(card), "::/").stdout
    assert "firstrun" not in listing


@pytest.mark.parametrize("bad, fragment", [
    (["--wifi-country", "de"], "Wi-Fi country"),
    (["--hostname", "Snack_07"], "hostname"),
    (["--timezone", "Berlin; rm -rf /"], "time zone"),
])
def test_bad_first_boot_values_exit_2_before_anything_is_written(tmp_path, bad, fragment):
    image, sha = _boot_image(tmp_path, {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG})
    result, card = _flash_settings(tmp_path, image, sha, *bad)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert not card.exists() and "checking sha256" not in result.stderr


def test_a_private_key_or_a_short_passphrase_is_refused(tmp_path):
    image, sha = _boot_image(tmp_path, {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG})
    (tmp_path / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    result, card = _flash_settings(tmp_path, image, sha, "--ssh-key", str(tmp_path / "id_ed25519"))
    assert result.returncode == 2 and "not an OpenSSH public key" in result.stderr and not card.exists()
    args = _first_boot_args(tmp_path)
    (tmp_path / "wifi.psk").write_text("short\n")
    result = _run("bash", str(FLASH), "--image", str(image), "--sha256", sha, "--device", str(card),
                  "--allow-file", "--yes", *args)
    assert result.returncode == 2 and "8 to 63" in result.stderr and not card.exists()


def test_first_boot_settings_need_all_their_parts(tmp_path):
    image, sha = _boot_image(tmp_path, {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG})
    result = _run("bash", str(FLASH), "--image", str(image), "--sha256", sha, "--device", str(tmp_path / "card.bin"),
                  "--allow-file", "--yes", "--hostname", "snack-07")
    assert result.returncode == 2 and "--user is required" in result.stderr


def test_the_wheelhouse_lands_on_the_card_for_an_offline_install(tmp_path, checkout):
    image, sha = _boot_image(tmp_path, {"cmdline.txt": STOCK_CMDLINE, "config.txt": STOCK_CONFIG})
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "pyserial-3.5-py2.py3-none-any.whl").write_bytes(os.urandom(3000))
    (wheelhouse / "pi-requirements.txt").write_text("pyserial==3.5\n")
    fleet = tmp_path / "fleet.pem"
    fleet.write_text(FLEET_PEM)
    card = tmp_path / "card.bin"
    result = _run("bash", str(checkout), "--image", str(image), "--sha256", sha, "--device", str(card),
                  "--allow-file", "--yes", "--unit-id", "snack-07", "--fleet-public-key", str(fleet),
                  "--wheelhouse", str(wheelhouse))
    assert result.returncode == 0, result.stderr
    for name in ("pyserial-3.5-py2.py3-none-any.whl", "pi-requirements.txt"):
        assert _read_fat_file(card, f"/vendor-node/wheelhouse/{name}", tmp_path) == (wheelhouse / name).read_bytes()
    assert _read_fat_file(card, "/vendor-node/unit-id", tmp_path) == b"snack-07\n"
    result = _run("bash", str(FLASH), "--image", str(image), "--sha256", sha, "--device", str(card),
                  "--allow-file", "--yes", "--wheelhouse", str(tmp_path / "fleet.pem"))
    assert result.returncode == 2 and "no such folder" in result.stderr
