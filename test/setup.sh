#!/usr/bin/env bash
# Prepares a fresh machine for `make test`: installs the Debian packages the rig runs
# (only those missing) and builds the pinned tools into the cache (only those missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A need=(
	[initdb]=postgresql-15
	[mariadbd]=mariadb-server
	[sqlite3]=sqlite3
	[zstd]=zstd
	[/usr/bin/time]=time
	# The real vcluster's Kubernetes image needs a static cp (test/image, vcluster-kubernetes).
	[busybox]=busybox-static
	# Azurite, the Azure Storage emulator (test/tools/build.sh installs it with npm).
	[node]=nodejs
	[npm]=npm
)
missing=()
for cmd in "${!need[@]}"; do
	if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/lib/postgresql/15/bin/$cmd" ]; then
		missing+=("${need[$cmd]}")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: missing packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	# The rig starts its own throwaway servers; stop any the packages started.
	service mariadb stop >/dev/null 2>&1 || true
	service postgresql stop >/dev/null 2>&1 || true
fi
bash test/tools/build.sh
# The real vcluster (TestRealVCluster*): not in build.sh's default set; a cold build adds
# ~5 min on 2 cores, warm it is a stamp check. vclusterctl (vcluster's CLI) is built only
# on demand (`test/tools/build.sh vclusterctl`): no test in make test runs it yet.
bash test/tools/build.sh vcluster vcluster-chart

# The test node (test/rig/node.go) runs containerd, runc and the CNI plugins in a network
# namespace (iproute2, util-linux's nsenter) and the kubelet needs iptables.
node_missing=()
for pair in containerd:containerd runc:runc ip:iproute2 nsenter:util-linux iptables:iptables; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || node_missing+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || node_missing+=(containernetworking-plugins)
if [ ${#node_missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: the node tests need ${node_missing[*]} and root; they will be skipped" >&2
	else
		echo "setup: installing ${node_missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${node_missing[@]}" >/dev/null
	fi
fi
