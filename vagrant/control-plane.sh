#!/bin/sh
# The control plane: kubeadm init with kube-proxy in iptables mode
# (vagrant/kubeadm-config.yaml), Calico in BGP mode without encapsulation
# (the Tigera operator and vagrant/calico-installation.yaml), then the seed's
# Deployment and Services (tracer/lab/manifests/nginx-demo.yaml).
# Usage: control-plane.sh NODE_IP JOIN_TOKEN CALICO_VERSION
set -eu

NODE_IP=$1
JOIN_TOKEN=$2
CALICO_VERSION=$3
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
    sed -e "s/@NODE_IP@/${NODE_IP}/g" -e "s/@JOIN_TOKEN@/${JOIN_TOKEN}/g" \
        /vagrant/vagrant/kubeadm-config.yaml > /root/kubeadm-config.yaml
    kubeadm init --config /root/kubeadm-config.yaml
fi

# kubectl for the vagrant user too.
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -o vagrant -g vagrant -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config

# Calico: the operator, then the Installation (BGP, no IPIP, no VXLAN).
kubectl create -f "https://raw.githubusercontent.com/projectcalico/calico/${CALICO_VERSION}/manifests/tigera-operator.yaml" \
    2>/dev/null || kubectl get deployment -n tigera-operator tigera-operator >/dev/null
kubectl wait --for=condition=Established --timeout=120s crd/installations.operator.tigera.io
kubectl apply -f /vagrant/vagrant/calico-installation.yaml

# The seed's workload; its pods start once the workers have joined.
kubectl apply -f /vagrant/tracer/lab/manifests/nginx-demo.yaml
