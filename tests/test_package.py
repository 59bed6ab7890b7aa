"""The package imports on any laptop: hardware and heavy libraries load only inside their adapters."""
import subprocess
import sys

HARDWARE_MODULES = ("picamera2", "gpiozero", "serial", "ai_edge_litert", "tflite_runtime", "tensorflow",
                    "matplotlib", "tqdm")


def test_importing_the_package_and_cli_loads_no_hardware_library():
    code = (
        "import sys, vendor_node, vendor_node.cli, vendor_node.config, vendor_node.errors\n"
        "vendor_node.cli.build_parser()\n"
        f"print(','.join(m for m in {HARDWARE_MODULES!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"imported at package/CLI import time: {loaded}"


def test_every_module_imports_without_hardware():
    code = (
        "import importlib, pkgutil, sys, vendor_node\n"
        "for m in pkgutil.walk_packages(vendor_node.__path__, 'vendor_node.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(','.join(m for m in ('picamera2', 'tensorflow') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_help_lists_every_command(capsys):
    from vendor_node.cli import main

    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for command in ("run", "simulate", "selftest", "provision", "enroll", "unenroll", "accounts", "fleet",
                    "journal", "sync", "eval", "bench"):
        assert f"    {command}" in out
