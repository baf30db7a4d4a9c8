package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
)

// TestByNameUsage: the by-name forms refuse what cannot work before touching a cluster.
func TestByNameUsage(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "none")
	for _, args := range [][]string{
		{"snapshot", "create", "vc1", "--datastore", "etcd://127.0.0.1:1", "s3://b/k"}, // both forms
		{"snapshot", "create", "--dry-run", "s3://b/k"},                                // dry run without a name
		{"snapshot", "create", "vc1", "-n", "ns", "file:///tmp/x"},                     // the engine cannot reach a local file
		{"restore", "vc1", "-n", "ns", "file:///tmp/x"},
		{"restore", "--dry-run", "s3://b/k"},
		{"snapshot", "create", "vc1", "-n", "ns", "--kubeconfig", kc, "s3://b/k"}, // no such kubeconfig
		{"restore", "a", "b", "c"},
	} {
		if r := vcsnap(t, nil, args...); r.code != exitUsage {
			t.Errorf("vcsnap %s: exit %d, want %d (usage)\n%s", strings.Join(args, " "), r.code, exitUsage, r.stderr)
		}
	}
}

// TestVolumesAndValuesFiles: the engine flags the by-name snapshot passes write the
// volume records into the clear manifest (a failed one marks the bundle partial) and the
// vcluster values only into the body.
func TestVolumesAndValuesFiles(t *testing.T) {
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 20, 100)
	dir := t.TempDir()
	vols := []bundle.Volume{
		{Namespace: "team-a", PVC: "data-x-db-x-vc1", VirtualNamespace: "db", VirtualName: "data", Driver: "csi.example", SnapshotHandle: "snap-1", RestoreSize: 1 << 30},
		{Namespace: "team-a", PVC: "logs-x-db-x-vc1", Driver: "csi.example", Error: "timed out waiting for readyToUse"},
	}
	vf := filepath.Join(dir, "volumes.json")
	b, _ := json.Marshal(vols)
	if err := os.WriteFile(vf, b, 0o600); err != nil {
		t.Fatal(err)
	}
	values := "controlPlane:\n  backingStore:\n    database:\n      external:\n        dataSource: mysql://kine:TOPSECRET@tcp(db:3306)/kine\n"
	valf := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(valf, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	pass := filepath.Join(dir, "passphrase")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "file://" + filepath.Join(dir, "b1")
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "--volumes-file", vf, "--vcluster-values-file", valf,
		"--vcluster-version", "0.21.1", "--host-service-cidr", "10.96.0.0/12", "--service-cidr", "10.96.0.0/12",
		"--encrypt-passphrase-file", pass, url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	r := vcsnap(t, nil, "-o", "json", "snapshot", "describe", url)
	var e snapshot.Entry
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil || e.Manifest == nil {
		t.Fatalf("describe: %v %+v", err, r)
	}
	m := e.Manifest
	if len(m.Volumes) != 2 || m.Volumes[0].SnapshotHandle != "snap-1" || m.Volumes[1].Error == "" || !m.Partial ||
		m.Source.VClusterVersion != "0.21.1" || m.Source.HostServiceCIDR != "10.96.0.0/12" || m.Source.ServiceCIDR != "10.96.0.0/12" {
		t.Fatalf("manifest %+v", m)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "b1"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "TOPSECRET") {
		t.Fatal("the vcluster values appear in the clear bytes of an encrypted bundle")
	}
	// They are in the meta record of the (decrypted) body.
	loc, err := storage.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if _, _, err := snapshot.Scan(context.Background(), loc, snapshot.ReadOptions{Keys: encrypt.Keys{PassphraseFile: pass}}, func(rec *bundle.Record) error {
		if rec.Type == bundle.RecordMeta {
			got = rec.Meta.Extra[bundle.ExtraVClusterValues]
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got != values {
		t.Fatalf("meta record's %s = %q, want the values file", bundle.ExtraVClusterValues, got)
	}
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "--volumes-file", valf, "file://"+filepath.Join(dir, "b2")); r.code != exitUsage {
		t.Errorf("a volumes file that is not JSON: %+v, want exit %d", r, exitUsage)
	}
}
