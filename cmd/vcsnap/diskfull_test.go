package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/vcsnap/vcsnap/test/embedetcd"
	"github.com/vcsnap/vcsnap/test/rig"
)

// smallFS mounts a tmpfs of size bytes for the test: a real filesystem that fills up.
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Getuid() != 0 {
		rig.Missing(t, "mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// Issue 21 item 9: a store or a SQLite target on a filesystem that fills up, and an etcd
// target over its space quota, fail with errors that say so; nothing is left half-visible
// and the target keeps (or gets back) its previous state.
func TestDiskFullAndQuota(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 1500, 4096) // 6 MiB of incompressible values
	big := "file://" + t.TempDir() + "/big"
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, big); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}

	// The store's filesystem fills up: no bundle, no part file, nothing listed.
	full := smallFS(t, 2<<20)
	r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "file://"+full+"/snap")
	if r.code == exitOK || !strings.Contains(r.stderr, "no space left on device") {
		t.Fatalf("create onto a full filesystem: %+v", r)
	}
	if left, _ := os.ReadDir(full); len(left) != 0 {
		t.Fatalf("a failed create left %v on the full filesystem", left)
	}
	if r := vcsnap(t, nil, "snapshot", "list", "-o", "json", "file://"+full); r.code != exitOK || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("list after the failed create: %+v", r)
	}

	// A SQLite target on a filesystem too small for the restored database keeps its old one.
	tiny, tinyCli := startEtcd(t)
	fill(t, tinyCli, 20, 100)
	sq := smallFS(t, 3<<20)
	db := filepath.Join(sq, "state.db")
	if r := vcsnap(t, nil, "migrate", "--from", tiny.URL, "--to", "sqlite://"+db); r.code != exitOK {
		t.Fatalf("migrate into the small filesystem: %+v", r)
	}
	count := func() string {
		out, err := exec.Command(rig.SystemTool(t, "sqlite3"), db, "SELECT count(*) FROM kine WHERE name LIKE '/registry/%' AND deleted = 0;").CombinedOutput()
		if err != nil {
			t.Fatalf("sqlite3: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	before := count()
	r = vcsnap(t, nil, "restore", "--force", "--datastore", "sqlite://"+db, big)
	if r.code == exitOK || !strings.Contains(r.stderr, "full") {
		t.Fatalf("restore into SQLite on a full filesystem: %+v", r)
	}
	if got := count(); got != before {
		t.Fatalf("the SQLite target holds %s keys after the failed restore, %s before", got, before)
	}
	if left, _ := filepath.Glob(filepath.Join(sq, "*")); len(left) != 1 || left[0] != db {
		t.Fatalf("files left beside the target: %v", left)
	}

	// An etcd target that reached its space quota (its NOSPACE alarm is raised: it takes
	// reads and deletes, no more puts, until an operator clears it).
	dir := t.TempDir()
	small, err := embedetcd.StartWith(dir, func(c *embed.Config) { c.QuotaBackendBytes = 2 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{small.Endpoint}})
	if err != nil {
		small.Close()
		t.Fatal(err)
	}
	for i := range 10 {
		cli.Put(context.Background(), fmt.Sprintf("/registry/secrets/a/s%d", i), "old")
	}
	filler := strings.Repeat("f", 64<<10)
	for i := 0; ; i++ {
		_, err := cli.Put(context.Background(), fmt.Sprintf("/registry/configmaps/fill/f%04d", i), filler)
		if err != nil {
			if !strings.Contains(err.Error(), "database space exceeded") || i > 2000 {
				t.Fatalf("filling the etcd to its quota: %v after %d puts", err, i)
			}
			break
		}
	}
	before2 := keysOf(t, cli)
	r = vcsnap(t, nil, "restore", "--force", "--datastore", small.URL, big)
	cli.Close()
	small.Close()
	if r.code == exitOK || !strings.Contains(r.stderr, "quota") {
		t.Fatalf("restore into an etcd over its quota: %+v", r)
	}
	// The error says how to get the old keys back once the quota is raised: do that.
	undo := printedCommand(t, r.stderr, "  vcsnap restore ")
	bigger, err := embedetcd.StartWith(dir, func(c *embed.Config) { c.QuotaBackendBytes = 64 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	defer bigger.Close()
	cli2, err := clientv3.New(clientv3.Config{Endpoints: []string{bigger.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	if _, err := cli2.AlarmDisarm(context.Background(), &clientv3.AlarmMember{}); err != nil {
		t.Fatal(err)
	}
	pasteIntoShell(t, strings.Replace(undo, small.URL, bigger.URL, 1)) // the restarted etcd listens elsewhere
	after := keysOf(t, cli2)
	if len(after) != len(before2) || after["/registry/secrets/a/s3"] != "old" {
		t.Fatalf("after the undo: %d keys, %d before", len(after), len(before2))
	}
}
