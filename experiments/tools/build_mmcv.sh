#!/usr/bin/env bash
# Build mmcv 2.1.0 (full, with compiled ops) from its source distribution against the torch that is
# installed in the given Python environment, and install it.
#
# Why: mmsegmentation 1.2.2 needs 2.0.0rc4 <= mmcv < 2.2.0 and imports mmcv.ops eagerly, so
# mmcv-lite cannot serve, and no mmcv 2.1.0 wheel exists for torch 2.14. mmcv 2.1.0's setup.py
# hard-codes -std=c++17 while torch 2.14's headers need C++20 (upstream mmcv issue 3341): the one
# fix applied here raises that flag in the unpacked source before building.
#
# The wheel is kept in a folder keyed by torch version, CUDA flag, Python tag and platform in the
# user's cache (not pip's cache, which keys mmcv by its source archive only and can hand back a wheel
# built against another torch), so a fresh clone reuses it instead of compiling again (~18 min, 2 cores).
#
# Usage: build_mmcv.sh PYTHON   (env: FORCE_CUDA=1 for a CUDA build, MAX_JOBS, ALIGNZEG_WHEELS)
set -euo pipefail
PY=$(realpath -s "${1:?usage: build_mmcv.sh PYTHON}")
MMCV_VERSION=2.1.0
FORCE_CUDA=${FORCE_CUDA:-0}
key=$("$PY" - "$FORCE_CUDA" <<'PYEOF'
import sys, sysconfig, torch
cuda = "cu" + (torch.version.cuda or "none").replace(".", "") if sys.argv[1] == "1" else "cpu"
print(f"torch-{torch.__version__.split('+')[0]}-{cuda}-cp{sys.version_info.major}{sys.version_info.minor}-"
      f"{sysconfig.get_platform().replace('-', '_')}")
PYEOF
)
cache=${ALIGNZEG_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/alignzeg/wheels}/$key
mkdir -p "$cache"
if ! ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  echo "[build_mmcv] no mmcv $MMCV_VERSION wheel in $cache: building from source (about 18 min on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip install -q "ninja==1.11.1.1" "setuptools<81" wheel
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  grep -q -- "-std=c++17" "$src/setup.py" || { echo "[build_mmcv] expected -std=c++17 in $src/setup.py" >&2; exit 1; }
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-2}" \
     "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$work/dist" . > "$work/build.log" 2>&1) \
     || { tail -50 "$work/build.log" >&2; exit 1; }
  tmp="$cache/.tmp.$$"; mkdir -p "$tmp"; cp "$work"/dist/mmcv-*.whl "$tmp"/ && mv "$tmp"/*.whl "$cache"/ && rmdir "$tmp"
fi
"$PY" -m pip install -q --no-deps --no-index --find-links "$cache" "mmcv==$MMCV_VERSION"
"$PY" -c "import mmcv, mmcv.ops; print('[build_mmcv] mmcv', mmcv.__version__, 'with ops OK')"
