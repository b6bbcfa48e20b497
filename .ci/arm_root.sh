#!/usr/bin/env bash
# An aarch64 Debian with Python 3.11 and the runtime's aarch64 wheels, for tests/arm (QEMU user
# mode on an x86-64 host; see tests/arm/conftest.py). Usage: .ci/arm_root.sh [DIR]
#
#   DIR/sysroot   debootstrap's first stage with every .deb unpacked by dpkg-deb: no
#                 binfmt_misc on CI machines, so no second stage and no chroot.
#   DIR/wheels    aarch64 wheels installed by this host's pip (`--platform`, `--target`).
#   DIR/stamp     what was built; a second call with the same inputs does nothing.
#
# DIR: $FSANET_ARM_ROOT, else /var/cache/fsanet-arm. PYTHON: the host Python whose pip installs
# the wheels and whose runtime versions are pinned (default: .venv/bin/python, else python3).
# FSANET_ARM_MIRROR: the Debian mirror (default: the one apt is configured with).
# Needs root (debootstrap), qemu-user-static and debootstrap, and the network (Debian, PyPI).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
DIR=$(realpath -m "${1:-${FSANET_ARM_ROOT:-/var/cache/fsanet-arm}}")
cd "$(dirname "$SELF")/.."

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

for tool in qemu-aarch64-static debootstrap dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        echo "arm_root: $tool is missing (apt-get install qemu-user-static debootstrap)" >&2
        exit 2
    fi
done

mirror() {
    if [[ -n ${FSANET_ARM_MIRROR:-} ]]; then echo "$FSANET_ARM_MIRROR"; return; fi
    # The first Debian archive apt uses (deb822 or one-line sources), not its security suite.
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
          | awk '$1 == "URIs:" || $1 == "deb" { for (i = 2; i <= NF; i++)
                     if ($i ~ /\/debian\/?$/) { print $i; exit } }')
    echo "${uri:-http://deb.debian.org/debian}"
}

# The runtime's packages (what `import fsanet.engine.pose` and the emulated probes import), at
# the versions this host's runtime has, so emulated and host runs compare the same releases.
PACKAGES="numpy onnx onnxruntime openvino opencv-python-headless scipy platformdirs tqdm"
REQUIREMENTS=$("$PYTHON" - "$PACKAGES" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

out = []
for name in sys.argv[1].split():
    try:
        out.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        out.append(name)
print(" ".join(out))
EOF
)
# pip picks the newest wheel among the tags given: with manylinux2014_aarch64 alone it silently
# falls back to old releases (onnxruntime 1.16, openvino 2023.1), so every tag is listed.
PLATFORMS=()
for minor in $(seq 35 -1 17); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
PLATFORMS+=(--platform manylinux2014_aarch64)

MIRROR=$(mirror)
STAMP="$(sha256sum "$SELF" | cut -d' ' -f1) $MIRROR $REQUIREMENTS"
if [[ -f $DIR/stamp && $(cat "$DIR/stamp") == "$STAMP" ]]; then
    echo "arm_root: $DIR is ready"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "arm_root: debootstrap needs root" >&2; exit 2; }

mkdir -p "$DIR"
rm -rf "$DIR/stamp" "$DIR/sysroot.partial" "$DIR/wheels.partial"

echo "arm_root: debootstrap arm64 bookworm from $MIRROR"
debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv \
    bookworm "$DIR/sysroot.partial" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$DIR/debootstrap.log" >&2; exit 1; }
# Stage 2 would run aarch64 maintainer scripts (needs binfmt_misc): unpacking is enough to run
# Python, which is all the tests do.
for deb in "$DIR"/sysroot.partial/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$DIR/sysroot.partial"
done
if [[ ! -e $DIR/sysroot.partial/usr/bin/python3 ]]; then
    echo "arm_root: no python3 in the unpacked root" >&2
    exit 1
fi

echo "arm_root: aarch64 wheels: $REQUIREMENTS"
# shellcheck disable=SC2086  # REQUIREMENTS is a list of words
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --no-compile \
    --only-binary=:all: --target "$DIR/wheels.partial" \
    --python-version 3.11 --implementation cp --abi cp311 "${PLATFORMS[@]}" $REQUIREMENTS

rm -rf "$DIR/sysroot" "$DIR/wheels" "$DIR/pycache"
mv "$DIR/sysroot.partial" "$DIR/sysroot"
mv "$DIR/wheels.partial" "$DIR/wheels"
echo "$STAMP" >"$DIR/stamp"
echo "arm_root: $DIR is ready ($(du -sh "$DIR" | cut -f1))"
