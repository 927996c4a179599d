"""The environment is pinned as a whole, and what runs these tests is that environment.

- requirements.txt is a hashed lock (pip-tools) of every package: each one pinned with ``==`` and at
  least one sha256; every direct pin of requirements.in is on it at the same version; it is closed
  under the installed packages' own requirements (so nothing outside it was resolved in).
- the interpreter running the tests has exactly the locked versions installed.
- the Makefile installs the lock with ``--require-hashes`` and re-installs when the lock changes.
- mmcv (not on the lock, built from source): the source archive's sha256 is recorded and enforced, the
  ops kind of a wheel is read off its compiled library, and the installed mmcv is the cached wheel for
  the installed torch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.txt"
LOCK_INPUT = REPO / "requirements.in"
BUILD_MMCV = REPO / "experiments" / "tools" / "build_mmcv.sh"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def _logical_lines(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line.split(" #")[0].strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _lock() -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, hashes, line) for every entry of the lock."""
    entries = {}
    for line in _logical_lines(LOCK):
        spec, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", spec)
        assert match, f"lock entry not pinned with ==: {line[:120]}"
        hashes = [HASH.fullmatch(o).group(1) for o in options if HASH.fullmatch(o)]
        assert len(hashes) == len(options), f"unexpected options in {line[:120]}"
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{name} twice in the lock"
        entries[name] = (match.group(2), hashes, line)
    return entries


LOCKED = _lock()


def test_lock_pins_every_package_with_a_hash():
    assert len(LOCKED) > 100, "the lock should hold the whole environment, not only the direct pins"
    for name in ("torch", "torchvision", "triton", "nvidia-cudnn-cu13", "setuptools", "pip", "ninja"):
        assert name in LOCKED, name
    unhashed = [name for name, (_, hashes, _) in LOCKED.items() if not hashes]
    assert not unhashed, unhashed


def test_direct_requirements_are_locked_at_the_same_version():
    direct = [Requirement(line) for line in _logical_lines(LOCK_INPUT)]
    assert len(direct) >= 20
    for req in direct:
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"{req} is not pinned"
        pin = next(iter(req.specifier)).version
        name = canonicalize_name(req.name)
        assert name in LOCKED, f"{req} is not in requirements.txt: run `make lock`"
        assert LOCKED[name][0] == pin, f"requirements.in pins {req}, the lock {LOCKED[name][0]}: run `make lock`"


def test_installed_versions_are_the_locked_ones():
    wrong = {}
    for name, (pin, _, _) in LOCKED.items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is None or Version(have) != Version(pin):
            wrong[name] = (pin, have)
    assert not wrong, f"locked vs installed (run `make install`): {wrong}"


def test_lock_is_closed_under_the_installed_requirements():
    """Every requirement of a locked package (and of mmcv) is itself locked, at a version it accepts."""
    missing = []
    for name in [*LOCKED, "mmcv"]:
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in LOCKED or not req.specifier.contains(LOCKED[dep][0], prereleases=True):
                missing.append(f"{name} needs {req}; lock has {LOCKED.get(dep, ('nothing',))[0]}")
    assert not missing, missing


def _make(*args: str) -> str:
    make = shutil.which("make")
    assert make, "make is needed for the Makefile checks"
    out = subprocess.run([make, "-C", str(REPO), *args], capture_output=True, text=True, check=True)
    return out.stdout


def test_makefile_installs_the_lock_with_hashes_and_depends_on_it(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    recipe = _make("-n", "install", f"VENV={venv}")
    pip_lines = [line for line in recipe.splitlines() if "pip install" in line]
    assert any(re.search(r"pip install .*--require-hashes -r requirements\.txt$", line) for line in pip_lines), recipe
    for line in pip_lines:  # nothing else is installed outside the lock but the project itself
        assert "--require-hashes" in line or ("--no-deps" in line and line.endswith("-e .")), line
    assert "pip check" in recipe and "build_mmcv.sh" in recipe
    # Up to date once the stamp is newer than everything; out of date again when the lock changes.
    (venv / ".alignzeg-installed").touch()
    assert "pip install" not in _make("-n", "install", f"VENV={venv}")
    assert "--require-hashes" in _make("-n", "-W", "requirements.txt", "install", f"VENV={venv}")


def test_build_script_enforces_the_recorded_source_sha256(tmp_path):
    script = BUILD_MMCV.read_text()
    recorded = re.findall(r"^MMCV_SDIST_SHA256=([0-9a-f]{64})$", script, flags=re.M)
    assert len(recorded) == 1
    assert "--require-hashes" in script and 'check_sdist "$sdist"' in script
    assert not re.search(r"pip\"? install[^\n]*(ninja|setuptools|wheel)[=<>]", script), "build tools come from the lock"
    fake = tmp_path / "mmcv-2.1.0.tar.gz"
    fake.write_bytes(b"not the mmcv source archive")
    got = hashlib.sha256(fake.read_bytes()).hexdigest()
    out = subprocess.run(["bash", str(BUILD_MMCV), sys.executable, "--check-sdist", str(fake)],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert str(fake) in out.stderr and recorded[0] in out.stderr and got in out.stderr, out.stderr


def _elf_with_needed(libs: list[str]) -> bytes:
    """A minimal 64-bit little-endian ELF whose .dynamic section lists `libs` as DT_NEEDED."""
    dynstr = b"\0" + b"".join(lib.encode() + b"\0" for lib in libs)
    offsets, pos = [], 1
    for lib in libs:
        offsets.append(pos)
        pos += len(lib) + 1
    dynamic = b"".join(struct.pack("<qQ", 1, off) for off in offsets) + struct.pack("<qQ", 0, 0)
    str_off = 64
    dyn_off = str_off + len(dynstr)
    sh_off = dyn_off + len(dynamic)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 0)
    null = bytes(64)
    strtab = struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(dynstr), 0, 0, 1, 0)
    dyn = struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dyn_off, len(dynamic), 1, 0, 8, 16)
    return header + dynstr + dynamic + null + strtab + dyn


def _wheel_with_ext(path: Path, ext: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mmcv/_ext.cpython-311-x86_64-linux-gnu.so", ext)
        zf.writestr("mmcv-2.1.0.dist-info/RECORD", "")
    return path


def _ops_of(wheel: Path) -> str:
    out = subprocess.run(["bash", str(BUILD_MMCV), sys.executable, "--ops-of", str(wheel)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_wheel_ops_are_read_off_the_compiled_library(tmp_path):
    cuda = _elf_with_needed(["libc10.so", "libc10_cuda.so", "libcudart.so.13", "libtorch_cuda.so"])
    cpu = _elf_with_needed(["libc10.so", "libtorch_cpu.so", "libtorch_python.so", "libstdc++.so.6"])
    assert _ops_of(_wheel_with_ext(tmp_path / "cuda.whl", cuda)) == "cuda"
    assert _ops_of(_wheel_with_ext(tmp_path / "cpu.whl", cpu)) == "cpu"
    # The installed mmcv's own library agrees with what mmcv says it was compiled with.
    from mmcv.ops import get_compiling_cuda_version

    ext = next(Path(md.distribution("mmcv").locate_file("mmcv")).glob("_ext*.so"))
    real = _ops_of(_wheel_with_ext(tmp_path / "installed.whl", ext.read_bytes()))
    assert (real == "cpu") == (get_compiling_cuda_version() == "not available"), real


def test_installed_mmcv_is_the_cached_wheel_for_the_installed_torch():
    import os

    import torch

    key = subprocess.run(["bash", str(BUILD_MMCV), sys.executable, "--key"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert key.startswith(f"torch-{torch.__version__.split('+')[0]}-"), key
    root = Path(os.environ.get("ALIGNZEG_WHEELS")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alignzeg" / "wheels")
    wheels = sorted((root / key).glob("mmcv-2.1.0-*.whl"))
    assert wheels, f"no mmcv wheel in {root / key}: run `make install`"

    def ext_hash(lines):
        return [line.split(",")[1] for line in lines if re.match(r"mmcv/_ext[^/,]*,", line)]

    with zipfile.ZipFile(wheels[0]) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        want = ext_hash(zf.read(record).decode().splitlines())
    have = ext_hash(md.distribution("mmcv").read_text("RECORD").splitlines())
    assert len(want) == 1 and want == have, f"installed mmcv is not {wheels[0]}: run `make install`"
