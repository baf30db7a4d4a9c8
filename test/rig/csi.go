package rig

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// CSIDriverName is the name of vcsnap's test CSI driver (test/csidriver).
const CSIDriverName = "csi.vcsnap.test"

// CSINodeID is the fixed node id the test driver reports.
const CSINodeID = "rig-node"

const csiDriverPackage = "github.com/vcsnap/vcsnap/test/csidriver"

var (
	csiBuildPath string
	csiBuildErr  error
	csiBuilt     bool
)

// CSIDriverBinary builds test/csidriver once per test process (go build into
// a temp dir, removed by CleanupBuilds) and returns the binary's path.
func CSIDriverBinary(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if !csiBuilt {
		csiBuilt = true
		csiBuildPath, csiBuildErr = buildCSIDriver()
	}
	if csiBuildErr != nil {
		if strings.Contains(csiBuildErr.Error(), "go tool not found") {
			Missing(t, "%v", csiBuildErr)
		}
		t.Fatalf("build test CSI driver: %v", csiBuildErr)
	}
	return csiBuildPath
}

func buildCSIDriver() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		if !isExecutable(goBin) {
			return "", fmt.Errorf("go tool not found to build %s", csiDriverPackage)
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "vcsnap-rig-build-")
	if err != nil {
		return "", err
	}
	buildDirs = append(buildDirs, dir)
	out := filepath.Join(dir, "csidriver")
	cmd := exec.Command(goBin, "build", "-o", out, csiDriverPackage)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", csiDriverPackage, err, buf.String())
	}
	return out, nil
}

// moduleRoot finds the vcsnap module root from the working directory (go
// test runs in the package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/vcsnap/vcsnap\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("module github.com/vcsnap/vcsnap not found above the working directory")
		}
		dir = parent
	}
}

// CSIDriver is a running test CSI driver.
type CSIDriver struct {
	Name    string // csi.vcsnap.test
	Socket  string // unix socket path
	Root    string // --root: volumes/ and snapshots/ below
	Process *Process
}

// StartCSIDriver builds (once) and starts the test CSI driver and waits until
// it answers Probe.
func StartCSIDriver(t testing.TB) *CSIDriver {
	t.Helper()
	return StartCSIDriverAt(t, "")
}

// StartCSIDriverAt is StartCSIDriver on a given --root (a fresh temp dir when
// empty). Two drivers on one root see the same volumes and snapshots: two hosts
// sharing one storage system, where snapshot handles resolve on both.
func StartCSIDriverAt(t testing.TB, root string) *CSIDriver {
	t.Helper()
	RequireIntegration(t)
	if root == "" {
		root = filepath.Join(t.TempDir(), "csi-root")
	}
	bin := CSIDriverBinary(t)
	sockDir := tempDir(t, "rig-csi-") // short path: unix socket names are limited to 107 bytes
	d := &CSIDriver{
		Name:   CSIDriverName,
		Socket: filepath.Join(sockDir, "csi.sock"),
		Root:   root,
	}
	d.Process = StartProcess(t, ProcSpec{
		Name: "csidriver", Path: bin,
		Args: []string{"--endpoint", "unix://" + d.Socket, "--root", d.Root, "--name", d.Name, "--node-id", CSINodeID},
	})
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id := csi.NewIdentityClient(conn)
	WaitReady(t, 30*time.Second, "csi driver Probe", func(ctx context.Context) error {
		if _, err := os.Stat(d.Socket); err != nil {
			return err
		}
		_, err := id.Probe(ctx, &csi.ProbeRequest{})
		return err
	}, d.Process)
	return d
}

// Stop stops the driver (idempotent).
func (d *CSIDriver) Stop() { d.Process.Stop() }

var csiSafeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// csiID is the driver's mapping from a CSI name to its handle (see
// test/csidriver: safe names are used as they are).
func csiID(name string) string {
	if csiSafeName.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:16])
}

// VolumeDir is the directory holding the data of a volume, given the PV name
// (the provisioner uses it as the CSI name) or the volume handle.
func (d *CSIDriver) VolumeDir(pvNameOrHandle string) string {
	return filepath.Join(d.Root, "volumes", csiID(pvNameOrHandle))
}

// SnapshotFile is the tar file of a snapshot, given its handle
// (VolumeSnapshotContent status.snapshotHandle).
func (d *CSIDriver) SnapshotFile(handle string) string {
	return filepath.Join(d.Root, "snapshots", csiID(handle)+".tar")
}

// ChartDir is the Helm chart's directory in the repository.
func ChartDir(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "chart", "vcsnap")
}

// MoveTestSnapshot gives a snapshot of the test CSI driver (test/csidriver) a new
// handle on its storage: the old handle stops resolving, as a region-bound handle
// does in another region.
func MoveTestSnapshot(t testing.TB, root, from, to string) {
	t.Helper()
	dir := filepath.Join(root, "snapshots")
	meta, err := os.ReadFile(filepath.Join(dir, from+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(meta, &m); err != nil {
		t.Fatal(err)
	}
	m["id"], m["name"] = to, to
	meta, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, to+".json"), meta, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, from+".tar"), filepath.Join(dir, to+".tar")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, from+".json")); err != nil {
		t.Fatal(err)
	}
}
