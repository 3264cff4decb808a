#!/bin/sh
# A worker joins the control plane with the Vagrantfile's bootstrap token.
# The CA is not pinned (--discovery-token-unsafe-skip-ca-verification): the
# token is fixed in the Vagrantfile, so this is for a throwaway lab only.
# Usage: worker.sh NODE_IP CONTROL_PLANE_IP JOIN_TOKEN
set -eu

NODE_IP=$1
CONTROL_PLANE_IP=$2
JOIN_TOKEN=$3

if [ -f /etc/kubernetes/kubelet.conf ]; then
    echo "worker ${NODE_IP}: already joined"
    exit 0
fi
# The control plane may still be coming up when this VM gets here.
i=0
until curl -ksf "https://${CONTROL_PLANE_IP}:6443/readyz" >/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then
        echo "worker ${NODE_IP}: the API server at ${CONTROL_PLANE_IP} never answered" >&2
        exit 1
    fi
    sleep 5
done
kubeadm join "${CONTROL_PLANE_IP}:6443" --token "${JOIN_TOKEN}" \
    --discovery-token-unsafe-skip-ca-verification
