// Package rig is vcsnap's real-component test harness: it runs real etcd,
// kine, PostgreSQL, MariaDB, MinIO, kube-apiserver, kube-controller-manager,
// the CSI snapshot sidecars and a test CSI driver as child processes bound to
// 127.0.0.1 on free ports, each stopped by its PID when the test ends.
//
// Building blocks: StartEtcd, StartKine, StartPostgres, StartMariaDB,
// StartMinIO, StartAPIServer, StartCSIDriver. Compositions: StartDatastore
// (an empty datastore of a kind), StartVirtual (a virtual cluster's control
// plane: datastore + apiserver) and StartHost (a host cluster with working
// CSI provisioning and VolumeSnapshots). FillRealistic, DumpAll and DiffDumps
// fill a cluster through its API and compare its content before and after.
// On a real node (StartNode): StartVClusterOnNode runs a vcluster-shaped
// stand-in, InstallRealVCluster the real loft-sh/vcluster v0.30.0 from its chart.
//
// Environment:
//   - VCSNAP_TOOLS_DIR: the tools cache built by `make tools`
//     (default $HOME/.cache/vcsnap-tools; binaries in bin/, CRDs in crds/).
//   - CI=true: a missing component fails the test instead of skipping it.
//   - VCSNAP_RIG_LOG_DIR: keep every process log under this directory
//     (<dir>/<test name>/<process>.log); by default logs live in the test's
//     temp dir and the last lines of each are printed when a test fails.
//
// Every Start* function skips under `go test -short`.
package rig

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// ToolsDir is the tools cache: $VCSNAP_TOOLS_DIR, else $HOME/.cache/vcsnap-tools.
func ToolsDir() string {
	if d := os.Getenv("VCSNAP_TOOLS_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "vcsnap-tools")
}

// InCI reports whether the tests run in CI (CI=true), where a missing
// component fails the test instead of skipping it.
func InCI() bool { return os.Getenv("CI") == "true" }

// AllowMissing is the environment variable that lets a test whose component is missing
// skip instead of fail, outside CI (a quick run on a machine without the tools).
const AllowMissing = "VCSNAP_ALLOW_MISSING"

// Missing stops the test because a component it needs is not available: it fails, so
// that no run reads "ok" while a real component was never exercised, unless
// VCSNAP_ALLOW_MISSING=1 (outside CI) asks for a skip, which is then said loudly.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("missing component (CI=true, so this fails): %s", msg)
	}
	if os.Getenv(AllowMissing) != "1" {
		t.Fatalf("missing component: %s; run `make tools` (or set %s=1 to skip such tests)", msg, AllowMissing)
	}
	fmt.Fprintf(os.Stderr, "SKIPPED (missing component, %s=1): %s: %s\n", AllowMissing, t.Name(), msg)
	t.Skipf("skipping: %s; run `make tools`", msg)
}

// RequireIntegration skips the test under `go test -short`. Every Start*
// function calls it, so rig-based tests never run in short mode.
func RequireIntegration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
}

// Tool returns the path of the named binary in ToolsDir()/bin, or stops the
// test through Missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(ToolsDir(), "bin", name)
	if isExecutable(p) {
		return p
	}
	Missing(t, "tool %q not found at %s", name, p)
	return ""
}

// CRDDir is the directory with the VolumeSnapshot CRD manifests.
func CRDDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join(ToolsDir(), "crds")
	m, _ := filepath.Glob(filepath.Join(d, "*.yaml"))
	if len(m) == 0 {
		Missing(t, "VolumeSnapshot CRDs not found in %s", d)
	}
	return d
}

// SystemTool finds a binary installed on the system (setup.sh installs the rig's Debian
// packages), or stops the test through Missing.
func SystemTool(t testing.TB, name string) string {
	t.Helper()
	return systemBinary(t, name, "test/setup.sh installs it")
}

// systemBinary finds a binary installed on the system (PATH, then the given
// extra directories), or stops the test through Missing with the hint.
func systemBinary(t testing.TB, name, hint string, dirs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range append(dirs, "/usr/local/bin", "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin") {
		m, _ := filepath.Glob(filepath.Join(d, name))
		for _, p := range m {
			if isExecutable(p) {
				return p
			}
		}
	}
	Missing(t, "%s not found (%s)", name, hint)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// CleanupBuilds removes binaries the rig built for this test process (the
// test CSI driver). Call it from TestMain after m.Run.
func CleanupBuilds() {
	buildMu.Lock()
	defer buildMu.Unlock()
	for _, d := range buildDirs {
		_ = os.RemoveAll(d)
	}
	buildDirs = nil
}

var (
	buildMu   sync.Mutex
	buildDirs []string
)
