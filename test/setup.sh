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
