#!/usr/bin/env bash
# Runs every fuzz target for a number of executions (not a duration: go1.26's coordinator
# can report "context deadline exceeded" at the end of a -fuzztime duration on a busy
# machine, golang/go#75804). Usage: test/fuzz.sh EXECS  (make test: 100000, make fuzz: more)
set -euo pipefail
cd "$(dirname "$0")/.."
execs=${1:-100000}
# name, package, weight (the decoder is cheap per input and matters most).
targets=(
	"FuzzReader ./snapshot/bundle/ 5"
	"FuzzStoreURL ./storage/ 1"
	"FuzzDatastoreURL ./datastore/open/ 1"
)
for t in "${targets[@]}"; do
	read -r name pkg weight <<<"$t"
	n=$((execs * weight))
	echo "fuzz $name ($n execs)"
	go test -count=1 -run '^$' -fuzz "^$name\$" -fuzztime "${n}x" "$pkg" | grep -v '^fuzz: elapsed'
done
