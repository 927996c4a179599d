#!/usr/bin/env bash
# Build mmcv 2.1.0 (full, with compiled ops) from its source distribution against the torch that is
# installed in the given Python environment, and install it.
#
# Why: mmsegmentation 1.2.2 needs 2.0.0rc4 <= mmcv < 2.2.0 and imports mmcv.ops eagerly, so
# mmcv-lite cannot serve, and no mmcv 2.1.0 wheel exists for torch 2.14. mmcv 2.1.0's setup.py
# hard-codes -std=c++17 while torch 2.14's headers need C++20 (upstream mmcv issue 3341): the one
# fix applied here raises that flag in the unpacked source before building.
#
# Pinned like the rest of the environment (requirements.txt is the hashed lock; mmcv is not on it):
# - the source archive must have the sha256 recorded below: pip downloads it in hash-checking mode and
#   the script checks it again before unpacking (MMCV_SDIST=FILE uses a local copy, checked the same way);
# - the build tools (ninja, setuptools<81, wheel) come from the lock, not from an unpinned install;
# - mmcv is reinstalled whenever the installed one is not the cached wheel for the installed torch
#   (compared by the sha256 of the compiled _ext library in the two RECORDs), so changing the torch
#   pin in an existing venv builds, or takes from the cache, the matching wheel and installs it.
#
# The wheel is kept in the user's cache (not pip's, which keys mmcv by its source archive only and can
# hand back a wheel built against another torch), so a fresh clone reuses it instead of compiling again
# (~18 min, 2 cores), in a folder named torch-<version>-<ops>-cp<py>-<platform>, <ops> being `cpu` or
# `cu<torch CUDA>`. The folder looked in is what mmcv's setup.py will build (CUDA ops when FORCE_CUDA=1
# or torch sees a GPU, else CPU ops); the folder a new wheel is stored in is read off the built
# artefact (the libraries its _ext links), and a cached wheel whose ops differ from its folder's name is
# moved to the right folder instead of being used.
#
# Usage: build_mmcv.sh PYTHON              build (or reuse) and install mmcv into PYTHON's environment
#        build_mmcv.sh PYTHON --key        print the wheel-cache folder name this environment looks in
#        build_mmcv.sh PYTHON --ops-of WHEEL      print the ops a built mmcv wheel has (cpu|cuda|rocm)
#        build_mmcv.sh PYTHON --check-sdist FILE  check FILE against the recorded sha256
# Environment: FORCE_CUDA=1 for a CUDA build, MAX_JOBS, ALIGNZEG_WHEELS (cache root), MMCV_SDIST.
set -euo pipefail
MMCV_VERSION=2.1.0
# sha256 of mmcv-2.1.0.tar.gz as published on PyPI (the digest its simple index lists for the file).
MMCV_SDIST_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
usage="usage: build_mmcv.sh PYTHON [--key | --ops-of WHEEL | --check-sdist FILE]"
PY=$(realpath -s "${1:?$usage}")
mode=${2:-install}
export FORCE_CUDA=${FORCE_CUDA:-0}
root=${ALIGNZEG_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/alignzeg/wheels}
log() { echo "[build_mmcv] $*"; }
die() { echo "[build_mmcv] $*" >&2; exit 1; }

helper() {
  "$PY" - "$@" <<'PYEOF'
import hashlib, json, os, re, struct, sys, sysconfig, zipfile

def torch_base():
    import torch
    return torch, torch.__version__.split("+")[0]

def key(kind=None):
    """Cache folder name: torch-<version>-<cpu|cuXYZ|rocmXY>-cp<py>-<platform>."""
    torch, version = torch_base()
    if kind is None:  # what mmcv 2.1.0's setup.py will build here (its CUDA/HIP branch conditions)
        gpu = torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"
        kind = ("rocm" if torch.version.hip else "cuda") if gpu else "cpu"
    if kind == "cuda":
        ops = "cu" + (torch.version.cuda or "none").replace(".", "")
    elif kind == "rocm":
        ops = "rocm" + ".".join((torch.version.hip or "none").split(".")[:2]).replace(".", "")
    else:
        ops = "cpu"
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"torch-{version}-{ops}-{py}-{sysconfig.get_platform().replace('-', '_')}"

def ext_member(zf):
    names = [n for n in zf.namelist() if re.fullmatch(r"mmcv/_ext[^/]*\.(so|pyd|dylib)", n)]
    if len(names) != 1:
        sys.exit(f"[build_mmcv] {zf.filename}: expected one compiled mmcv/_ext library, found {names}")
    return names[0]

def elf_needed(data):
    """DT_NEEDED entries of a 64-bit little-endian ELF shared object; None if it is not one."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    needed = []
    for _, sh_type, _, _, off, size, link, _, _, _ in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        stroff = sections[link][4]
        for pos in range(off, off + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", stroff + val)
                needed.append(data[stroff + val:end].decode())
    return needed

def ops(wheel):
    """cpu, cuda or rocm: read off the libraries the wheel's compiled _ext links."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(ext_member(zf))
    needed = elf_needed(data)
    text = " ".join(needed) if needed is not None else data.decode("latin-1")
    if re.search(r"libcudart\.so|libc10_cuda\.so|libtorch_cuda\.so", text):
        return "cuda"
    if re.search(r"libamdhip64\.so|libc10_hip\.so|libtorch_hip\.so", text):
        return "rocm"
    return "cpu"

def ext_record(lines):
    hits = [line.split(",")[1] for line in lines if re.match(r"mmcv/_ext[^/,]*,", line)]
    return hits[0] if len(hits) == 1 else None

def installed_is(wheel):
    """Exit 0 when the installed mmcv carries exactly the _ext library of this wheel."""
    import importlib.metadata as md
    try:
        dist = md.distribution("mmcv")
    except md.PackageNotFoundError:
        sys.exit(1)
    with zipfile.ZipFile(wheel) as zf:
        record = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        want = ext_record(zf.read(record[0]).decode().splitlines())
    have = ext_record((dist.read_text("RECORD") or "").splitlines())
    sys.exit(0 if want is not None and want == have else 1)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    print(h.hexdigest())

def build_tools():
    import importlib.metadata as md
    missing = []
    for name in ("ninja", "setuptools", "wheel"):
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        sys.exit(f"[build_mmcv] {', '.join(missing)} missing from {sys.executable}'s environment: install the lock "
                 "first (pip install --require-hashes -r requirements.txt), which pins the build tools")
    if int(md.version("setuptools").split(".")[0]) >= 81:
        sys.exit("[build_mmcv] setuptools < 81 is needed (mmengine imports pkg_resources); install requirements.txt")

def marker(wheel, kind, source_sha256):
    import torch
    info = {"wheel": os.path.basename(wheel), "ops": kind, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "python": sys.version.split()[0], "source_sha256": source_sha256}
    with open(wheel[:-len(".whl")] + ".build.json", "w") as f:
        json.dump(info, f, indent=1)

def check_installed(kind):
    import torch
    import mmcv
    from mmcv.ops import get_compiling_cuda_version, nms
    compiled = get_compiling_cuda_version()
    if (compiled == "not available") != (kind == "cpu"):
        sys.exit(f"[build_mmcv] installed mmcv reports compiled CUDA '{compiled}' but its wheel has {kind} ops")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        sys.exit(f"[build_mmcv] mmcv.ops.nms kept {keep.tolist()}, expected [0, 2]")
    print(f"[build_mmcv] mmcv {mmcv.__version__} with {kind} ops (compiled CUDA: {compiled}) OK against "
          f"torch {torch.__version__}")

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "key":
    print(key(*args))
elif cmd == "ops":
    print(ops(*args))
else:
    {"installed-is": installed_is, "sha256": sha256, "build-tools": build_tools, "marker": marker,
     "check-installed": check_installed}[cmd](*args)
PYEOF
}

check_sdist() {
  local file=$1 got
  [[ -f $file ]] || die "source archive $file does not exist"
  got=$(helper sha256 "$file")
  [[ $got == "$MMCV_SDIST_SHA256" ]] || die "sha256 mismatch for $file: expected $MMCV_SDIST_SHA256" \
    "(mmcv-$MMCV_VERSION.tar.gz as published on PyPI), got $got. Refusing to build from it."
  log "$file: sha256 $got OK"
}

case $mode in
  install) ;;
  --key) helper key; exit ;;
  --ops-of) helper ops "${3:?$usage}"; exit ;;
  --check-sdist) check_sdist "${3:?$usage}"; exit ;;
  *) die "$usage" ;;
esac

expected_key=$(helper key)
wheel=$(ls "$root/$expected_key"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1 || true)
if [[ -n $wheel ]]; then
  kind=$(helper ops "$wheel")
  key=$(helper key "$kind")
  if [[ $key != "$expected_key" ]]; then
    log "$wheel has $kind ops, which its folder's name does not say: moving it to $root/$key/"
    mkdir -p "$root/$key"
    mv "$wheel" "$root/$key/"
    wheel=""
  fi
fi

if [[ -z $wheel ]]; then
  log "no mmcv $MMCV_VERSION wheel in $root/$expected_key: building from source (about 18 min on 2 cores)"
  helper build-tools
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  sdist=$work/mmcv-$MMCV_VERSION.tar.gz
  if [[ -n ${MMCV_SDIST:-} ]]; then
    check_sdist "$MMCV_SDIST"
    cp "$MMCV_SDIST" "$sdist"
  else
    # Hash-checking mode: pip refuses the archive (printing Expected/Got) before any of its code runs.
    printf 'mmcv==%s --hash=sha256:%s\n' "$MMCV_VERSION" "$MMCV_SDIST_SHA256" > "$work/mmcv-source.txt"
    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation --require-hashes \
      -d "$work" -r "$work/mmcv-source.txt" \
      || die "could not download mmcv-$MMCV_VERSION.tar.gz with sha256 $MMCV_SDIST_SHA256 (pip's message above" \
             "says why; its 'Got' line is the sha256 of the archive it was served)"
    check_sdist "$sdist"
  fi
  tar -xzf "$sdist" -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  grep -q -- "-std=c++17" "$src/setup.py" || die "expected -std=c++17 in $src/setup.py"
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  # The environment's bin first, so torch's BuildExtension finds the locked ninja.
  (cd "$src" && PATH="$(dirname "$PY"):$PATH" MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" \
     "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$work/dist" . > "$work/build.log" 2>&1) \
     || { tail -50 "$work/build.log" >&2; exit 1; }
  built=$(ls "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl)
  kind=$(helper ops "$built")
  key=$(helper key "$kind")
  [[ $FORCE_CUDA == 1 && $kind == cpu ]] && die "FORCE_CUDA=1 but the built $built has CPU ops only"
  [[ $key == "$expected_key" ]] \
    || log "WARNING: built $kind ops, not what $expected_key says; storing the wheel under $key"
  mkdir -p "$root/$key"
  tmp="$root/$key/.tmp.$$"; mkdir -p "$tmp"
  cp "$built" "$tmp"/
  wheel="$root/$key/$(basename "$built")"
  helper marker "$tmp/$(basename "$built")" "$kind" "$MMCV_SDIST_SHA256"
  mv "$tmp"/*.build.json "$root/$key"/ && mv "$tmp"/*.whl "$root/$key"/ && rmdir "$tmp"
  log "stored $wheel ($kind ops)"
fi

if helper installed-is "$wheel"; then
  log "installed mmcv is already $wheel"
else
  log "installing $wheel"
  "$PY" -m pip install -q --force-reinstall --no-deps --no-index "$wheel"
fi
helper check-installed "$kind"
