#!/bin/sh
# Every node: what kubeadm needs (containerd, kubelet, kubeadm, kubectl from
# pkgs.k8s.io), the kernel settings Kubernetes and Calico expect, and the
# kubelet bound to the private network address (eth0 is Vagrant's NAT).
# Usage: node.sh NODE_IP K8S_MINOR   (e.g. 192.168.64.57 1.31)
set -eu

NODE_IP=$1
K8S_MINOR=$2
export DEBIAN_FRONTEND=noninteractive

# kubelet refuses to run with swap on (its default failSwapOn).
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab

# Pod traffic is routed (Calico) and bridged (none here, but kube-proxy's
# checks expect it); kube-proxy in iptables mode needs br_netfilter.
cat > /etc/modules-load.d/kubernetes.conf <<'MODULES'
overlay
br_netfilter
MODULES
modprobe overlay
modprobe br_netfilter
cat > /etc/sysctl.d/90-kubernetes.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -q
apt-get install -y -q --no-install-recommends \
    ca-certificates curl gpg apt-transport-https containerd iptables conntrack socat

# containerd with the systemd cgroup driver, as kubeadm configures the kubelet.
mkdir -p /etc/containerd
containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd

# Kubernetes packages (the community repository, one minor version).
install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/Release.key" \
    | gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v${K8S_MINOR}/deb/ /" \
    > /etc/apt/sources.list.d/kubernetes.list
apt-get update -q
apt-get install -y -q kubelet kubeadm kubectl
apt-mark hold kubelet kubeadm kubectl

echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" > /etc/default/kubelet
systemctl enable kubelet
