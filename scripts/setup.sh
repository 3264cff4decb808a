#!/bin/sh
# Idempotent set-up of tracer on Debian 12, as root: the system packages the
# tracer and its lab need, a virtualenv that sees Debian's BCC, and
# /usr/local/bin/tracer (on root's and sudo's PATH).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (BPF and network namespaces need it)" >&2
    exit 3
fi

# Debian packages. python3-bpfcc is BCC; linux-headers-amd64 gives BCC the
# headers it insists on (the tracer takes struct offsets from BTF, not from
# these); the rest is the lab (bird2, nginx-light, iptables, nftables for
# kube-proxy's nftables mode, wrk) and the
# independent witnesses the tests compare against (conntrack, tcpdump, tshark);
# qemu-system-x86 and busybox-static (with kmod) let virtme-ng boot Debian's
# distro kernel for the kprobe/fentry tests (make test-kernels); vagrant with
# vagrant-libvirt (its provider, so `vagrant validate` checks the libvirt
# settings offline) and shellcheck check the Vagrant cluster's files.
# dnsmasq-base is the real UDP (DNS) server in the lab's pods, for UDP
# Services (only the binary: the dnsmasq package would start a host service).
APT_PACKAGES="python3-bpfcc bpftool linux-headers-amd64 python3-venv python3-dev
gcc make iproute2 iptables nftables conntrack bird2 nginx-light dnsmasq-base wrk curl tcpdump tshark
procps psmisc kmod sudo iputils-ping qemu-system-x86 busybox-static
vagrant vagrant-libvirt shellcheck"

missing=""
for p in $APT_PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

# Debian's BCC is importable only by Debian's python3: the venv is built from
# it and sees its site-packages.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import bcc" 2>/dev/null; then
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Reinstall only when the project's metadata changed.
stamp="$ROOT/.setup-stamp"
want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! [ -x "$VENV/bin/tracer" ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "${ROOT}[dev]"
    echo "$want" > "$stamp"
fi

ln -sf "$VENV/bin/tracer" /usr/local/bin/tracer
echo "setup: ready ($(/usr/local/bin/tracer --version))"
