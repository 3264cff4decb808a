#!/bin/sh
# tracer on every node, from the synced repository: scripts/setup.sh installs
# BCC, the kernel headers and the rest as Debian packages, builds the
# virtualenv and links /usr/local/bin/tracer (so `sudo tracer ...` works).
set -eu

/vagrant/scripts/setup.sh
# BCC compiles against the running kernel's headers; linux-headers-amd64 (in
# setup.sh) follows the newest Debian kernel, which the box may not run yet.
apt-get install -y -q "linux-headers-$(uname -r)" || echo "no headers for $(uname -r)" >&2
tracer doctor || echo "tracer doctor reported problems (see above)" >&2
