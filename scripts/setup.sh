#!/usr/bin/env bash
# Install what vmcluster's lab, demo and tests need on Debian 12, then (re)install
# the package into a virtualenv. Idempotent: fast when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(
    qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    iproute2 util-linux mount libvirt-dev pkg-config gcc python3-dev python3-venv
    lvm2 drbd-utils ganeti-htools-3.0
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# libvirtd refuses to start without this user; the lab bind-mounts over these folders.
id libvirt-qemu >/dev/null 2>&1 || useradd -r -U libvirt-qemu
mkdir -p /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check ".[tests]"
