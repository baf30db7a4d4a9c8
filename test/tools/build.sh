#!/usr/bin/env bash
# Builds the pinned test tools (etcd, kine, Kubernetes components, MinIO,
# fake-gcs-server, CSI sidecars, helm) and the VolumeSnapshot CRDs into a cache
# folder, and installs Azurite (npm), idempotently.
#
#   test/tools/build.sh [TOOL...]     # default: every tool except the extras
#   test/tools/build.sh --list        # print tool names and pins
#
# Extras, built only when named (test/setup.sh, and so `make test`, names them):
#   test/tools/build.sh vcluster vclusterctl vcluster-chart
#
# Cache dir: ${VCSNAP_TOOLS_DIR:-$HOME/.cache/vcsnap-tools}
#   bin/<tool>          the binary
#   bin/.<tool>.stamp   the pinned version it was built from
#   crds/*.yaml         VolumeSnapshot CRDs (stamp: crds/.crds.stamp)
#   charts/vcluster/    vcluster's Helm chart (stamp: charts/.vcluster-chart.stamp)
#   logs/<tool>.log     output of the last build of <tool>
# A tool is rebuilt only when its binary or stamp is missing or the stamp
# differs from the pin below. Force a rebuild by deleting the stamp
# (or the whole cache dir).
#
# Needs: Go >= 1.25.1 and gcc (kine uses cgo sqlite). Uses the normal Go
# module and build caches, so later builds are warm. Checksums are always
# verified: wrapper modules (test/tools/<name>/) carry a committed go.sum,
# `go install M@V` builds are checked against the checksum database.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${VCSNAP_TOOLS_DIR:-$HOME/.cache/vcsnap-tools}"
BIN="$DIR/bin"
CRDS="$DIR/crds"
CHARTS="$DIR/charts"
LOGS="$DIR/logs"

# ---- pins -------------------------------------------------------------------
ETCD_VERSION=v3.5.21                                  # go.etcd.io/etcd/{server,etcdctl,etcdutl}/v3 (wrapper: etcd/)
KINE_VERSION=v0.16.4                                  # github.com/k3s-io/kine (go install)
K8S_VERSION=v1.32.2                                   # k8s.io/kubernetes + staging v0.32.2 (wrapper: kubernetes/)
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c      # github.com/minio/minio (go install)
FAKE_GCS_VERSION=v1.56.1                              # github.com/fsouza/fake-gcs-server (go install; a GCS emulator)
AZURITE_VERSION=3.35.0                                # npm azurite (an Azure Storage emulator; 3.36+ need Node.js 22, Debian has 18)
SNAPSHOTTER_VERSION=v8.2.0                            # github.com/kubernetes-csi/external-snapshotter/v8 (wrapper: external-snapshotter/)
SNAPSHOT_CLIENT_VERSION=v8.2.0                        # github.com/kubernetes-csi/external-snapshotter/client/v8 (CRDs)
PROVISIONER_VERSION=v5.3.0                            # github.com/kubernetes-csi/external-provisioner/v5 (wrapper: external-provisioner/)
HELM_VERSION=v3.18.6                                  # helm.sh/helm/v3 (go install)
HELM_K8S_MINOR=33                                     # minor of the k8s.io/client-go helm v3.18.6 requires (v0.33.x)
VCLUSTER_VERSION=v0.30.0                              # github.com/loft-sh/vcluster (wrapper: vcluster/; the chart comes from its module zip)

ALL_TOOLS=(
  etcd etcdctl etcdutl
  kine
  kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
  minio
  fake-gcs-server
  azurite
  snapshot-controller csi-snapshotter
  csi-provisioner
  helm
  crds
)

# Built only when named on the command line, never by default: a cold vcluster
# build adds ~6 min on 2 cores (about 8 CPU-minutes, 2 GB of RAM). test/setup.sh
# (make test) names them, for the real-vcluster e2e test.
EXTRA_TOOLS=(
  vcluster vclusterctl vcluster-chart
)

pin_of() {
  case "$1" in
    etcd|etcdctl|etcdutl) echo "$ETCD_VERSION" ;;
    kine) echo "$KINE_VERSION" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) echo "$K8S_VERSION" ;;
    minio) echo "$MINIO_VERSION" ;;
    fake-gcs-server) echo "$FAKE_GCS_VERSION" ;;
    azurite) echo "$AZURITE_VERSION" ;;
    snapshot-controller|csi-snapshotter) echo "$SNAPSHOTTER_VERSION" ;;
    csi-provisioner) echo "$PROVISIONER_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    crds) echo "$SNAPSHOT_CLIENT_VERSION" ;;
    vcluster|vclusterctl|vcluster-chart) echo "$VCLUSTER_VERSION" ;;
    csi-node-driver-registrar)
      echo "csi-node-driver-registrar: github.com/kubernetes-csi/node-driver-registrar is not served by the module proxy here (403 for every v2.x tried); not built" >&2
      return 1 ;;
    *) echo "unknown tool: $1 (known: ${ALL_TOOLS[*]} ${EXTRA_TOOLS[*]})" >&2; return 1 ;;
  esac
}

# ---- helpers ----------------------------------------------------------------
die() { echo "build.sh: $*" >&2; exit 1; }

# The Go flags shared by every build. CGO is on for all of them (kine needs it)
# so that the standard library and shared packages are built once.
export CGO_ENABLED=1
export GOWORK=off            # never pick up a go.work from an enclosing folder
GOBUILD_FLAGS=(-trimpath)

check_env() {
  command -v go >/dev/null || die "go not found in PATH"
  command -v gcc >/dev/null || die "gcc not found (kine needs cgo); on Debian: apt-get install gcc"
  local v; v="$(go env GOVERSION)"; v="${v#go}"
  local major minor patch
  IFS=. read -r major minor patch <<<"$v"
  minor="${minor%%[!0-9]*}"; patch="${patch%%[!0-9]*}"
  if (( major < 1 || (major == 1 && ${minor:-0} < 25) || (major == 1 && ${minor:-0} == 25 && ${patch:-0} < 1) )); then
    die "Go >= 1.25.1 needed (kine v0.16.4 requires it), found go$v"
  fi
}

stamp_file() {
  case "$1" in
    crds) echo "$CRDS/.crds.stamp" ;;
    vcluster-chart) echo "$CHARTS/.vcluster-chart.stamp" ;;
    *) echo "$BIN/.$1.stamp" ;;
  esac
}

up_to_date() {
  local tool="$1" pin="$2" stamp; stamp="$(stamp_file "$tool")"
  [[ -f "$stamp" && "$(<"$stamp")" == "$pin" ]] || return 1
  if [[ "$tool" == crds ]]; then
    local f
    for f in snapshot.storage.k8s.io_volumesnapshotclasses.yaml \
             snapshot.storage.k8s.io_volumesnapshotcontents.yaml \
             snapshot.storage.k8s.io_volumesnapshots.yaml; do
      [[ -s "$CRDS/$f" ]] || return 1
    done
  elif [[ "$tool" == vcluster-chart ]]; then
    chart_complete "$CHARTS/vcluster" || return 1
  elif [[ "$tool" == azurite ]]; then
    [[ -x "$BIN/$tool" && -s "$DIR/azurite-$pin/node_modules/azurite/package.json" ]] || return 1
  else
    [[ -x "$BIN/$tool" ]] || return 1
  fi
}

# Checks that a wrapper module really requires the pinned version, so the pin
# here and test/tools/<wrapper>/go.mod cannot drift apart silently.
check_wrapper_pin() {
  local wrapper="$1" module="$2" pin="$3" got
  got="$(cd "$HERE/$wrapper" && go list -mod=readonly -m -f '{{.Version}}' "$module")"
  [[ "$got" == "$pin" ]] || die "$wrapper/go.mod requires $module $got, build.sh pins $pin"
}

# module_dir DIR MODULE@VERSION: downloads the module (verified against DIR's
# go.sum, or the checksum database outside a module) and prints its folder in
# the module cache.
module_dir() {
  local dir="$1" target="$2" d
  d="$(cd "$dir" && go mod download -json "$target" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  [[ -n "$d" && -d "$d" ]] || die "could not locate $target in the module cache"
  echo "$d"
}

# wrapper_build WRAPPER OUT PKG [go build flags...]
wrapper_build() {
  local wrapper="$1" out="$2" pkg="$3"; shift 3
  (cd "$HERE/$wrapper" && go build -mod=readonly "${GOBUILD_FLAGS[@]}" "$@" -o "$out" "$pkg")
}

# goinstall_build OUT MODULE/PKG@VERSION CMDNAME [go install flags...]
goinstall_build() {
  local out="$1" target="$2" cmd="$3"; shift 3
  local gobin; gobin="$(mktemp -d "$BIN/.gobin.XXXXXX")"
  (cd "$DIR" && GOBIN="$gobin" go install "${GOBUILD_FLAGS[@]}" "$@" "$target")
  mv -f "$gobin/$cmd" "$out"
  rmdir "$gobin"
}

k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local f="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}

minio_ldflags() {
  # Mirrors minio's buildscripts/gen-ldflags.go for a non-release build,
  # derived from the pseudo-version (time stamp and commit).
  local ts="${MINIO_VERSION#v0.0.0-}"; ts="${ts%%-*}"
  local commit="${MINIO_VERSION##*-}"
  local d="${ts:0:4}-${ts:4:2}-${ts:6:2}" t="${ts:8:2}:${ts:10:2}:${ts:12:2}"
  local p=github.com/minio/minio/cmd
  echo "-s -w -X $p.Version=${d}T${t}Z -X $p.CopyrightYear=${ts:0:4} -X $p.ReleaseTag=DEVELOPMENT.${d}T${t//:/-}Z -X $p.CommitID=$commit -X $p.ShortCommitID=$commit"
}

vcluster_ldflags() {
  # As upstream's .goreleaser.yaml: the release version without its "v".
  # The telemetry key stays empty. Upstream also builds with -tags embed_chart,
  # which embeds a chart .tgz generated at release time; the module zip has
  # none, so the CLI is built without it (the rig installs the chart with helm).
  local v="${VCLUSTER_VERSION#v}" f="-s -w"
  [[ "$1" == vclusterctl ]] && f+=" -X main.version=$v"
  echo "$f -X github.com/loft-sh/vcluster/pkg/telemetry.SyncerVersion=$v"
}

# build_tool TOOL OUT: builds TOOL into the file OUT.
build_tool() {
  local tool="$1" out="$2"
  case "$tool" in
    etcd|etcdctl|etcdutl)
      local mod=go.etcd.io/etcd/server/v3
      [[ "$tool" == etcd ]] || mod="go.etcd.io/etcd/$tool/v3"
      check_wrapper_pin etcd "$mod" "$ETCD_VERSION"
      wrapper_build etcd "$out" "$mod" -ldflags "-s -w"
      ;;
    kine)
      CGO_CFLAGS="${CGO_CFLAGS:-} -DSQLITE_USE_ALLOCA=1" goinstall_build "$out" \
        "github.com/k3s-io/kine@$KINE_VERSION" kine -tags nats \
        -ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION"
      ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl)
      check_wrapper_pin kubernetes k8s.io/kubernetes "$K8S_VERSION"
      wrapper_build kubernetes "$out" "k8s.io/kubernetes/cmd/$tool" -ldflags "$(k8s_ldflags)"
      ;;
    minio)
      goinstall_build "$out" "github.com/minio/minio@$MINIO_VERSION" minio -ldflags "$(minio_ldflags)"
      ;;
    fake-gcs-server)
      goinstall_build "$out" "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION" fake-gcs-server -ldflags "-s -w"
      ;;
    azurite)
      # npm installs the package (checked against the registry's integrity hashes)
      # into its own folder; bin/azurite is a script that runs its blob service.
      command -v npm >/dev/null || die "npm not found (Azurite runs on Node.js): apt-get install nodejs npm"
      local pkg="$DIR/azurite-$AZURITE_VERSION"
      rm -rf "$pkg.tmp"
      npm install --no-audit --no-fund --omit=dev --prefix "$pkg.tmp" "azurite@$AZURITE_VERSION"
      rm -rf "$pkg"
      mv "$pkg.tmp" "$pkg"
      cat >"$out" <<EOS
#!/bin/sh
# Azurite $AZURITE_VERSION's blob service (installed by test/tools/build.sh).
if [ "\$1" = --version ]; then exec node -p "require('$pkg/node_modules/azurite/package.json').version"; fi
exec node "$pkg/node_modules/azurite/dist/src/blob/main.js" "\$@"
EOS
      chmod +x "$out"
      ;;
    snapshot-controller|csi-snapshotter)
      check_wrapper_pin external-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION"
      wrapper_build external-snapshotter "$out" "github.com/kubernetes-csi/external-snapshotter/v8/cmd/$tool" \
        -ldflags "-s -w -X main.version=$SNAPSHOTTER_VERSION"
      ;;
    csi-provisioner)
      check_wrapper_pin external-provisioner github.com/kubernetes-csi/external-provisioner/v5 "$PROVISIONER_VERSION"
      wrapper_build external-provisioner "$out" "github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner" \
        -ldflags "-s -w -X main.version=$PROVISIONER_VERSION"
      ;;
    helm)
      local hv=helm.sh/helm/v3/internal/version
      goinstall_build "$out" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" helm -ldflags \
        "-s -w -X $hv.version=$HELM_VERSION -X $hv.gitTreeState=clean
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR
         -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"
      ;;
    vcluster|vclusterctl)
      # Static, like upstream's release (CGO_ENABLED=0): the syncer binary is
      # meant to go into a container image.
      check_wrapper_pin vcluster github.com/loft-sh/vcluster "$VCLUSTER_VERSION"
      CGO_ENABLED=0 wrapper_build vcluster "$out" "github.com/loft-sh/vcluster/cmd/$tool" \
        -ldflags "$(vcluster_ldflags "$tool")"
      ;;
    *) die "no build rule for $tool" ;;
  esac
}

# verify_tool TOOL FILE: the binary must run and report the pinned version.
verify_tool() {
  local tool="$1" f="$2" want out
  want="$(pin_of "$tool")"
  case "$tool" in
    etcd) out="$("$f" --version)"; want="${want#v}" ;;
    etcdctl|etcdutl) out="$("$f" version)"; want="${want#v}" ;;
    kubectl) out="$("$f" version --client)" ;;
    helm) out="$("$f" version --short)" ;;
    minio) out="$("$f" --version)"; want="${MINIO_VERSION##*-}" ;;
    # No version flag: its usage lists the flags the rig passes.
    fake-gcs-server) out="$("$f" -help 2>&1 || true)"; want="-external-url" ;;
    azurite) out="$("$f" --version)" ;;
    # vcluster prints "vcluster version 0.30.0". The CLI's --version runs no
    # telemetry and no update check; HOME is a scratch dir so it writes nothing.
    vcluster) out="$("$f" --version 2>&1)"; want="version ${want#v}" ;;
    vclusterctl)
      local home; home="$(mktemp -d)"
      out="$(HOME="$home" VCLUSTER_SKIP_VERSION_CHECK=true "$f" --version 2>&1)" || { rm -rf "$home"; return 1; }
      rm -rf "$home"; want="version ${want#v}" ;;
    *) out="$("$f" --version 2>&1)" ;;
  esac
  if [[ "$out" != *"$want"* ]]; then
    echo "version check failed: expected '$want' in: $out" >&2
    return 1
  fi
  echo "$out"
}

install_crds() {
  local out="$1" dir
  dir="$(module_dir "$DIR" "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOT_CLIENT_VERSION")"
  [[ -d "$dir/config/crd" ]] || die "no config/crd in external-snapshotter/client/v8@$SNAPSHOT_CLIENT_VERSION"
  mkdir -p "$out"
  local f
  for f in "$dir"/config/crd/snapshot.storage.k8s.io_*.yaml; do
    install -m 0644 "$f" "$out/"
    echo "copied $(basename "$f")"
  done
}

chart_complete() {
  local c="$1"
  [[ -s "$c/Chart.yaml" && -s "$c/values.yaml" && -s "$c/templates/statefulset.yaml" ]]
}

# install_vcluster_chart OUT: copies chart/ from the vcluster module zip (the
# version the wrapper module pins) to OUT, writable so the cache can be removed.
install_vcluster_chart() {
  local out="$1" dir tmp
  check_wrapper_pin vcluster github.com/loft-sh/vcluster "$VCLUSTER_VERSION"
  dir="$(module_dir "$HERE/vcluster" "github.com/loft-sh/vcluster@$VCLUSTER_VERSION")"
  chart_complete "$dir/chart" || die "no chart/ in github.com/loft-sh/vcluster@$VCLUSTER_VERSION"
  mkdir -p "$(dirname "$out")"
  tmp="$out.tmp.$$"
  rm -rf "$tmp"
  cp -R "$dir/chart" "$tmp"
  chmod -R u+w "$tmp"
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "copied $dir/chart to $out"
}

# ---- main -------------------------------------------------------------------
if [[ "${1:-}" == "--list" ]]; then
  for t in "${ALL_TOOLS[@]}"; do printf '%-26s %s\n' "$t" "$(pin_of "$t")"; done
  for t in "${EXTRA_TOOLS[@]}"; do printf '%-26s %-44s only when named\n' "$t" "$(pin_of "$t")"; done
  exit 0
fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

tools=("$@")
(( ${#tools[@]} )) || tools=("${ALL_TOOLS[@]}")
for t in "${tools[@]}"; do pin_of "$t" >/dev/null || exit 2; done

mkdir -p "$BIN" "$CRDS" "$LOGS"

# One build at a time per cache dir (parallel test runs may call this script).
if command -v flock >/dev/null; then
  exec 9>"$DIR/.lock"
  flock 9
fi

start_all=$SECONDS
built=0
env_checked=0
for t in "${tools[@]}"; do
  pin="$(pin_of "$t")"
  if up_to_date "$t" "$pin"; then
    printf '%-26s %-44s up to date\n' "$t" "$pin"
    continue
  fi
  if (( ! env_checked )); then check_env; env_checked=1; fi
  log="$LOGS/$t.log"
  stamp="$(stamp_file "$t")"
  rm -f "$stamp"
  t0=$SECONDS
  if [[ "$t" == crds ]]; then
    if ! install_crds "$CRDS" >"$log" 2>&1; then
      echo "$t: FAILED, see $log" >&2; tail -n 30 "$log" >&2; exit 1
    fi
  elif [[ "$t" == vcluster-chart ]]; then
    if ! install_vcluster_chart "$CHARTS/vcluster" >"$log" 2>&1; then
      echo "$t: FAILED, see $log" >&2; tail -n 30 "$log" >&2; exit 1
    fi
  else
    tmp="$BIN/.$t.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    if ! { build_tool "$t" "$tmp" && verify_tool "$t" "$tmp"; } >"$log" 2>&1; then
      rm -f "$tmp"
      echo "$t: FAILED, see $log" >&2; tail -n 30 "$log" >&2; exit 1
    fi
    mv -f "$tmp" "$BIN/$t"
    trap - EXIT
  fi
  echo "$pin" >"$stamp"
  built=$((built + 1))
  printf '%-26s %-44s built in %ds\n' "$t" "$pin" $((SECONDS - t0))
done

if (( built == 0 )); then
  echo "everything is up to date in $DIR (${#tools[@]} tools, $((SECONDS - start_all))s)"
else
  echo "built $built of ${#tools[@]} tools into $DIR in $((SECONDS - start_all))s"
fi
