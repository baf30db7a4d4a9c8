package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIMigrate: etcd → SQLite → etcd data directory through the CLI, the exit codes of
// its refusals, the password file flags, and snapshot create/restore with SQLite URLs.
func TestCLIMigrate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	e, cli := startEtcd(t)
	fill(t, cli, 500, 300)
	dir := t.TempDir()
	sqlite := "sqlite://" + filepath.Join(dir, "state.db")

	if r := vcsnap(t, nil, "migrate", "--from", e.URL); r.code != exitUsage {
		t.Fatalf("migrate without --to: exit %d\n%s", r.code, r.stderr)
	}
	if r := vcsnap(t, nil, "migrate", "--from", e.URL, "--to", sqlite, "--to-password-file", filepath.Join(dir, "none")); r.code != exitUsage {
		t.Fatalf("missing password file: exit %d\n%s", r.code, r.stderr)
	}
	r := vcsnap(t, nil, "-o", "json", "-q", "migrate", "--from", e.URL, "--to", sqlite)
	if r.code != 0 {
		t.Fatalf("migrate: exit %d\n%s", r.code, r.stderr)
	}
	var res struct {
		Keys           int64  `json:"keys"`
		ToKind         string `json:"toKind"`
		SourceRevision int64  `json:"sourceRevision"`
		Revision       int64  `json:"revision"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Keys != 500 || res.ToKind != "kine-sqlite" || res.Revision <= res.SourceRevision {
		t.Fatalf("migrate result %+v %v\n%s", res, err, r.stdout)
	}
	if r := vcsnap(t, nil, "migrate", "--from", e.URL, "--to", sqlite); r.code != exitRefused || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("non-empty target: exit %d\n%s", r.code, r.stderr)
	}
	etcdDir := "etcd-dir://" + filepath.Join(dir, "etcd")
	if r := vcsnap(t, nil, "migrate", "--from", sqlite, "--to", etcdDir); r.code != 0 || !strings.Contains(r.stdout, "Migrated") {
		t.Fatalf("sqlite to etcd-dir: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// snapshot create and restore with SQLite URLs.
	bundle := "file://" + filepath.Join(dir, "bundle")
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", sqlite, bundle); r.code != 0 {
		t.Fatalf("snapshot create from sqlite: exit %d\n%s", r.code, r.stderr)
	}
	if r := vcsnap(t, nil, "restore", "--datastore", "sqlite://"+filepath.Join(dir, "restored.db"), bundle); r.code != 0 {
		t.Fatalf("restore into sqlite: exit %d\n%s", r.code, r.stderr)
	}

	// A password file for a server that is not there: exit 7, and the password never shows.
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("hunter2-secret\n"), 0o600)
	r = vcsnap(t, nil, "snapshot", "create", "--datastore", "postgres://kine@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		"--datastore-password-file", pw, "file://"+filepath.Join(dir, "b2"))
	if r.code != exitUnavailable || strings.Contains(r.stdout+r.stderr, "hunter2") {
		t.Fatalf("unreachable server: exit %d\n%s", r.code, r.stderr)
	}
	// Not a kine database.
	os.WriteFile(filepath.Join(dir, "text.db"), []byte("just some text, no database here"), 0o644)
	r = vcsnap(t, nil, "migrate", "--from", "sqlite://"+filepath.Join(dir, "text.db"), "--to", "sqlite://"+filepath.Join(dir, "x.db"))
	if r.code == 0 || !strings.Contains(r.stderr, "not a SQLite database") {
		t.Fatalf("not a database: exit %d\n%s", r.code, r.stderr)
	}
}
