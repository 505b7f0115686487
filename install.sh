#!/usr/bin/env bash
# Install everything nslab needs on a fresh Debian 12 / Ubuntu machine (run as root).
# The README, .ci/run and the Vagrantfile all use this one script.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo ./install.sh)" >&2
  exit 3
fi

# Every command nslab, bench/ and tests/ call, by package (a fresh Debian 12 image lacks most):
# ip/ss/bridge, ping, tcpdump, iptables(-save), iperf3, ethtool, brctl, curl, nc, ps/sysctl/pkill,
# killall/fuser, dot, mnexec (bench/build.py), unshare/setpriv/flock, file (containers.py),
# nft (the tests' root-namespace snapshot), tshark (tests read nslab's pcap files with it),
# conntrack (a node's NAT table: note 001's services chapter, tests/integration/test_services.py).
# Python packages (pyproject.toml, installed by pip below) include dnslib: the cluster DNS server.
# tests/vm/run installs what only the VM stage needs (qemu-system-x86, kmod, xz-utils).
APT_PACKAGES=(
  iproute2 iputils-ping tcpdump iptables iperf3 ethtool bridge-utils curl netcat-openbsd
  procps psmisc graphviz mininet python3-pip python3-venv util-linux coreutils file nftables tshark
  conntrack
  docker.io busybox-static debootstrap  # container nodes: the engine, and local images without a registry
  vagrant                               # `vagrant validate` of the Vagrantfile in the tests
  etcd-server etcd-client               # labs across machines (nslab/coord.py); the tests start their own
  openssl                               # `nslab sandbox up --tls`: its CA and certificates (nslab/sandbox.py)
  chromium chromium-driver              # `nslab web`'s browser tests (Selenium drives the system chromium)
  ipvsadm ipset                         # kube-proxy's ipvs mode (ipvsadm-restore, ipset restore; VM stage)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
  # docker.io's service starts at once: give it the flags that keep it off the host network
  # (no firewall rules, no ip_forward, no docker0) before it first runs.
  mkdir -p /etc/systemd/system/docker.service.d
  printf '[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock %s\n' \
    "--iptables=false --ip6tables=false --ip-forward=false --bridge=none" >/etc/systemd/system/docker.service.d/nslab.conf
  systemctl daemon-reload
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    # Debian's package enables and starts an etcd on 127.0.0.1:2379 at once: nslab needs only
    # the binary (the tests run their own on random ports; a cluster names its own etcd).
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
# PEP 668 distros refuse a system-wide pip install unless told; nslab is a root tool.
"$PY" -m pip install -q --disable-pip-version-check --break-system-packages -e . 2>/dev/null \
  || "$PY" -m pip install -q --disable-pip-version-check -e .
echo "install.sh: nslab $("$PY" -c 'import importlib.metadata as m; print(m.version("nslab"))') installed ($(command -v nslab))"

# Container nodes: the engine (left alone if one runs) and the local images (kept if built
# from the same recipe; the Debian one takes about a minute the first time).
nslab/images/start-dockerd
"$PY" -m nslab.cli images build
