#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (CPU) from the PyPI sdist and install it into a venv.
#
# Usage: scripts/build-minkowski.sh [TARGET_VENV]   (default: .venv)
#
# Why it looks like this (facts measured on the 2-core CPU build machine, see
# DESIGN.md section 7):
#  * the sdist's setup.py imports torch, so it must build with --no-build-isolation
#    against the torch already installed in the target venv;
#  * setuptools >= 60 breaks its numpy.distutils BLAS detection, so the build runs
#    in a throwaway venv holding setuptools<60 that *sees* the target's packages
#    through a .pth file -- the target venv's own setuptools is never touched;
#  * it needs OpenBLAS headers (apt package libopenblas-dev);
#  * its Python files use `collections.Sequence`; ulmtools.sparse aliases that at
#    import time, so the source is not patched.
# The script is idempotent: if MinkowskiEngine already imports in the target venv
# it exits at once (that is the CI cache).  Build time: ~8 min on 2 cores.
set -euo pipefail

TARGET_VENV="${1:-.venv}"
TARGET_PY="$TARGET_VENV/bin/python"
ME_VERSION="${ME_VERSION:-0.5.4}"
BUILD_VENV="${ME_BUILD_VENV:-${TMPDIR:-/tmp}/ulm-minkowski-build}"
WHEEL_DIR="${ME_WHEEL_DIR:-$HOME/.cache/ulmtools/wheels}"
JOBS="${MAX_JOBS:-$(nproc)}"

if [[ ! -x "$TARGET_PY" ]]; then
    echo "error: no python at $TARGET_PY; create the venv first (make install)" >&2
    exit 2
fi

check_import() {
    OPENBLAS_NUM_THREADS=1 "$TARGET_PY" - <<'PY' >/dev/null 2>&1
import collections, collections.abc
for _n in ("Sequence", "Mapping", "Iterable", "MutableMapping"):
    if not hasattr(collections, _n):
        setattr(collections, _n, getattr(collections.abc, _n))
import MinkowskiEngine as ME
assert ME.__version__ == "0.5.4", ME.__version__
PY
}

if check_import; then
    echo "MinkowskiEngine $ME_VERSION already importable in $TARGET_VENV; nothing to do."
    exit 0
fi

if ! "$TARGET_PY" -c "import torch" >/dev/null 2>&1; then
    echo "error: torch is not installed in $TARGET_VENV; install ulmtools first" >&2
    exit 2
fi

# OpenBLAS headers.
if [[ ! -e /usr/include/x86_64-linux-gnu/cblas.h && ! -e /usr/include/cblas.h \
      && ! -e /usr/include/openblas/cblas.h ]] && ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "Installing libopenblas-dev ..."
        apt-get install -y libopenblas-dev >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get install -y libopenblas-dev >/dev/null; }
    else
        echo "error: OpenBLAS headers missing; run: sudo apt-get install libopenblas-dev" >&2
        exit 2
    fi
fi

TARGET_SITE=$("$TARGET_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYVER=$("$TARGET_PY" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
BASE_PY=$("$TARGET_PY" -c "import sys; print(sys._base_executable)")

shopt -s nullglob
wheels=("$WHEEL_DIR"/[Mm]inkowski[Ee]ngine-"$ME_VERSION"-*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "Building MinkowskiEngine $ME_VERSION with $JOBS jobs (about 8 min on 2 cores) ..."
    rm -rf "$BUILD_VENV"
    "$BASE_PY" -m venv "$BUILD_VENV"
    # ninja lets torch's BuildExtension compile the sources in parallel.
    "$BUILD_VENV/bin/pip" install -q "setuptools<60" wheel ninja
    # Let the build venv import the target's torch and numpy, while its own
    # (older) setuptools stays first on sys.path.
    echo "$TARGET_SITE" > "$BUILD_VENV/lib/python$PYVER/site-packages/zz-ulm-target.pth"
    # setup.py shells out to a bare `pip uninstall MinkowskiEngine`: keep that
    # pointed at the throwaway venv.
    export PATH="$BUILD_VENV/bin:$PATH"
    SRC_DIR="$BUILD_VENV/src"
    mkdir -p "$SRC_DIR" "$WHEEL_DIR"
    "$BUILD_VENV/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
        "MinkowskiEngine==$ME_VERSION" -d "$SRC_DIR"
    tar -xzf "$SRC_DIR/MinkowskiEngine-$ME_VERSION.tar.gz" -C "$SRC_DIR"
    (
        cd "$SRC_DIR/MinkowskiEngine-$ME_VERSION"
        MAX_JOBS="$JOBS" OPENBLAS_NUM_THREADS=1 "$BUILD_VENV/bin/python" setup.py \
            bdist_wheel -d "$WHEEL_DIR" --cpu_only --blas=openblas
    )
    wheels=("$WHEEL_DIR"/[Mm]inkowski[Ee]ngine-"$ME_VERSION"-*.whl)
fi

"$TARGET_PY" -m pip install -q --no-deps --force-reinstall "${wheels[0]}"
if check_import; then
    echo "MinkowskiEngine $ME_VERSION installed into $TARGET_VENV."
else
    echo "error: MinkowskiEngine was installed but does not import; see the log above" >&2
    exit 1
fi
