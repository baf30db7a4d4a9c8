package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The data-loss cases of issue 23, driven through the CLI as a user types them. Expected
// state is read with the etcd client and the sqlite3 CLI, not with vcsnap's reader.

// keysOf reads every key and value of an etcd directly.
func keysOf(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := cli.Get(context.Background(), "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func names(dir string) string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, ",")
}

// Item 1: prune never counts a restore's safety backup as a snapshot, keeps it (it has
// its own retention), and removes only temporary files vcsnap can prove it wrote.
func TestPruneKeepsSnapshotsBesideSafetyBackups(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 30, 100)
	dst, dstCli := startEtcd(t)
	fill(t, dstCli, 27, 50)
	dir := t.TempDir()
	backups := filepath.Join(dir, "backups")
	for i := 1; i <= 3; i++ {
		if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, fmt.Sprintf("file://%s/snap%d", backups, i)); r.code != exitOK {
			t.Fatalf("create snap%d: %+v", i, r)
		}
	}
	r := vcsnap(t, nil, "restore", "--force", "--datastore", dst.URL, "file://"+backups+"/snap3")
	if r.code != exitOK {
		t.Fatalf("restore --force: %+v", r)
	}
	safety, _ := filepath.Glob(filepath.Join(backups, "snap3.pre-restore-*"))
	if len(safety) != 1 {
		t.Fatalf("safety backups %v", safety)
	}
	// Another program's part file, two days old, and one of vcsnap's own.
	foreign, own := filepath.Join(backups, "old.abc123.part"), filepath.Join(backups, "snap9.vcsnap-1234.part")
	for _, p := range []string{foreign, own} {
		os.WriteFile(p, []byte("partial"), 0o644)
		old := time.Now().Add(-48 * time.Hour)
		os.Chtimes(p, old, old)
	}
	r = vcsnap(t, nil, "snapshot", "prune", "--keep-last", "1", "file://"+backups+"/")
	if r.code != exitOK {
		t.Fatalf("prune: %+v", r)
	}
	want := "old.abc123.part,snap3," + filepath.Base(safety[0])
	if got := names(backups); got != want {
		t.Fatalf("after prune --keep-last 1: %s, want %s\n%s", got, want, r.stdout)
	}
	// list marks the safety backup as one.
	if r := vcsnap(t, nil, "snapshot", "list", "file://"+backups); r.code != exitOK || !regexp.MustCompile(`pre-restore-\S+\s+\S+\s+safety`).MatchString(r.stdout) {
		t.Fatalf("list: %+v", r)
	}
	// Safety backups have their own retention: a second forced restore, then keep one.
	if r := vcsnap(t, nil, "restore", "--force", "--datastore", dst.URL, "file://"+backups+"/snap3"); r.code != exitOK {
		t.Fatalf("second restore --force: %+v", r)
	}
	both, _ := filepath.Glob(filepath.Join(backups, "snap3.pre-restore-*"))
	if len(both) != 2 {
		t.Fatalf("safety backups after two restores: %v", both)
	}
	if r := vcsnap(t, nil, "snapshot", "prune", "--keep-last", "1", "--keep-safety-last", "1", "file://"+backups); r.code != exitOK {
		t.Fatalf("prune --keep-safety-last 1: %+v", r)
	}
	if got := names(backups); got != "old.abc123.part,snap3,"+filepath.Base(both[1]) {
		t.Fatalf("after --keep-safety-last 1: %s, want the newer of %v kept", got, both)
	}
}

// Item 4: a prefix without a trailing slash is a folder: prune of file:///x/backups never
// touches file:///x/backups2/.
func TestPrefixIsAFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 10, 100)
	dir := t.TempDir()
	for _, name := range []string{"backups/a", "backups/b", "backups2/c", "backups2/d"} {
		if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "file://"+filepath.Join(dir, name)); r.code != exitOK {
			t.Fatalf("create %s: %+v", name, r)
		}
	}
	if r := vcsnap(t, nil, "snapshot", "list", "file://"+dir+"/backups"); r.code != exitOK || strings.Contains(r.stdout, "backups2") ||
		!strings.Contains(r.stderr, "Folder file://"+dir+"/backups/") {
		t.Fatalf("list of the prefix without a slash: %+v", r)
	}
	r := vcsnap(t, nil, "snapshot", "prune", "--keep-last", "1", "file://"+dir+"/backups")
	if r.code != exitOK || !strings.Contains(r.stdout, "Folder file://"+dir+"/backups/") {
		t.Fatalf("prune: %+v", r)
	}
	if got := names(dir); got != "backups/b,backups2/c,backups2/d" {
		t.Fatalf("after prune of file://%s/backups: %s", dir, got)
	}
}

// Item 2: one etcd spelt two ways, or one SQLite file reached through a link, is one
// datastore: migrate refuses it before writing, whatever --force says.
func TestMigrateRefusesOneDatastoreSpeltTwoWays(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	e, cli := startEtcd(t)
	fill(t, cli, 40, 100)
	before := keysOf(t, cli)
	port := e.URL[strings.LastIndex(e.URL, ":")+1:]
	r := vcsnap(t, nil, "migrate", "--force", "--from", "etcd://localhost:"+port, "--to", "etcd://127.0.0.1:"+port)
	if r.code != exitUsage || !strings.Contains(r.stderr, "same datastore") {
		t.Fatalf("migrate onto itself: %+v", r)
	}
	if after := keysOf(t, cli); len(after) != len(before) {
		t.Fatalf("the source lost keys: %d -> %d", len(before), len(after))
	}

	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	if r := vcsnap(t, nil, "migrate", "--from", e.URL, "--to", "sqlite://"+db); r.code != exitOK {
		t.Fatalf("migrate to sqlite: %+v", r)
	}
	os.Symlink(db, filepath.Join(dir, "link.db"))
	sum := func() [32]byte { b, _ := os.ReadFile(db); return sha256.Sum256(b) }
	s0 := sum()
	r = vcsnap(t, nil, "migrate", "--force", "--from", "sqlite://"+filepath.Join(dir, "link.db"), "--to", "sqlite://"+dir+"/./state.db")
	if r.code != exitUsage || !strings.Contains(r.stderr, "same datastore") {
		t.Fatalf("migrate sqlite onto itself through a link: %+v", r)
	}
	if sum() != s0 {
		t.Fatal("the SQLite file changed")
	}
	if kept, _ := filepath.Glob(db + ".vcsnap-old-*"); len(kept) != 0 {
		t.Fatalf("files moved aside: %v", kept)
	}

	// migrate --force into another, non-empty datastore takes a safety backup by default
	// and prints the command that brings the target's keys back.
	other, otherCli := startEtcd(t)
	fill(t, otherCli, 5, 10)
	state := t.TempDir()
	r = vcsnap(t, []string{"XDG_STATE_HOME=" + state}, "migrate", "--force", "--from", e.URL, "--to", other.URL)
	if r.code != exitOK || !strings.Contains(r.stderr, "vcsnap restore --force --no-safety-backup --datastore "+other.URL) {
		t.Fatalf("migrate --force: %+v", r)
	}
	if saved, _ := filepath.Glob(filepath.Join(state, "vcsnap", "safety", "migrate-*")); len(saved) != 1 {
		t.Fatalf("default safety backup: %v", saved)
	}
}

// Item 3: Ctrl-C or SIGTERM in the middle of restore --force into an etcd puts the
// target's previous keys back (the target was emptied to make room).
func TestInterruptedForcedRestoreKeepsTheTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 6000, 4096) // 24 MiB: the restore takes a while after its first key
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "big")
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dst, dstCli := startEtcd(t)
			for i := range 27 {
				if _, err := dstCli.Put(context.Background(), fmt.Sprintf("/registry/pods/team/p-%02d", i), fmt.Sprintf("v%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			before := keysOf(t, dstCli)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The first restored key: the target's own keys are gone by now.
			wch := dstCli.Watch(ctx, "/registry/configmaps/", clientv3.WithPrefix())
			r := startVcsnap(t, "restore", "--force", "--datastore", dst.URL, url)
			select {
			case <-wch:
			case err := <-r.exited:
				t.Fatalf("restore ended before writing: %v\n%s", err, r.stderr.String())
			}
			r.cmd.Process.Signal(syscall.SIGSTOP)
			// Mid-restore for sure: the previous keys are gone, not every new one is there.
			mid := keysOf(t, dstCli)
			if _, ok := mid["/registry/pods/team/p-00"]; ok || len(mid) >= 6000 {
				r.cmd.Process.Signal(syscall.SIGCONT)
				t.Fatalf("not mid-restore: %d keys, previous ones present: %v", len(mid), ok)
			}
			r.cmd.Process.Signal(sig)
			r.cmd.Process.Signal(syscall.SIGCONT)
			err := <-r.exited
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
				t.Fatalf("exit %v, want %d\n%s", err, exitInterrupted, r.stderr.String())
			}
			if !strings.Contains(r.stderr.String(), "previous 27 keys were put back") {
				t.Fatalf("stderr does not say the keys were put back:\n%s", r.stderr.String())
			}
			after := keysOf(t, dstCli)
			for k, v := range before {
				if after[k] != v {
					t.Fatalf("key %s = %q after the interrupted restore, was %q (%d keys left)", k, after[k], v, len(after))
				}
			}
			if len(after) != len(before) {
				t.Fatalf("%d keys after the interrupted restore, %d before", len(after), len(before))
			}
		})
	}
}

// Items 6 and 8: misspelt subcommands and bad arguments fail with exit 2 and say what to
// do; an identity file holding a public key exits 8 and says which file is wanted.
func TestUsageErrorsExitTwo(t *testing.T) {
	dir := t.TempDir()
	pub := filepath.Join(dir, "pub.txt")
	os.WriteFile(pub, []byte("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"), 0o644)
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("pw\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "bundle"), []byte("x"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"snapshot", "lst", "-o", "json", "file:///tmp/"}, exitUsage, `did you mean "list"`},
		{[]string{"snapshot", "creat", "--datastore", "etcd://127.0.0.1:1", "file:///tmp/x"}, exitUsage, `did you mean "create"`},
		{[]string{"snapshot", "prnue", "--keep-last", "3", "file:///tmp/x"}, exitUsage, `unknown command "prnue"`},
		{[]string{"restor", "x"}, exitUsage, `did you mean "restore"`},
		{[]string{"snapshot", "list", "ftp://host/x"}, exitUsage, "unsupported store scheme"},
		{[]string{"snapshot", "list", "s3://b/x?regoin=eu"}, exitUsage, "regoin"},
		{[]string{"snapshot", "create", "--datastore", "etcdd://127.0.0.1:1", "file://" + dir + "/new"}, exitUsage, "unsupported datastore scheme"},
		{[]string{"snapshot", "create", "--datastore", "etcd://127.0.0.1:1?prefx=/a", "file://" + dir + "/new"}, exitUsage, "prefx"},
		{[]string{"snapshot", "create", "--datastore", "etcd://127.0.0.1:1", "--encrypt-recipient", "age1nope", "file://" + dir + "/new"}, exitUsage, "not an age X25519 public key"},
		{[]string{"snapshot", "create", "--datastore", "etcd://127.0.0.1:1", "--encrypt-recipient", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
			"--encrypt-passphrase-file", pass, "file://" + dir + "/new"}, exitUsage, "not both"},
		{[]string{"snapshot", "verify", "--identity-file", filepath.Join(dir, "missing"), "file://" + dir + "/bundle"}, exitUsage, "identity file"},
		{[]string{"snapshot", "verify", "--identity-file", pub, "file://" + dir + "/bundle"}, exitNoKey, "AGE-SECRET-KEY-1"},
		// A mistyped bundle is named before the (here unreachable) datastore is dialled.
		{[]string{"restore", "--datastore", "etcd://127.0.0.1:1", "file://" + dir + "/bundel"}, exitNotFound, "object not found"},
		{[]string{"restore", "--datastore", "etcd://127.0.0.1:1", "file://" + dir}, exitUsage, "is a directory"},
	} {
		r := vcsnap(t, nil, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.say) {
			t.Errorf("vcsnap %s: exit %d, want %d saying %q\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), r.code, tc.code, tc.say, r.stdout, r.stderr)
		}
	}
}

// Item 7: the undo command is printed shell-quoted on a line of its own, and pasted into a
// shell as it is (an S3-style URL with '&' in it) it brings the target's keys back.
func TestUndoCommandPastes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 20, 100)
	dst, dstCli := startEtcd(t)
	for i := range 7 {
		dstCli.Put(context.Background(), fmt.Sprintf("/registry/secrets/a/s%d", i), "old")
	}
	before := keysOf(t, dstCli)
	dir := filepath.Join(t.TempDir(), "it's here & there")
	url := "file://" + dir + "/snap"
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	r := vcsnap(t, nil, "restore", "--force", "--datastore", dst.URL, url)
	if r.code != exitOK {
		t.Fatalf("restore: %+v", r)
	}
	pasteIntoShell(t, printedCommand(t, r.stderr, "  vcsnap restore "))
	after := keysOf(t, dstCli)
	if len(after) != len(before) || after["/registry/secrets/a/s3"] != "old" {
		t.Fatalf("after the undo: %d keys (%d before)", len(after), len(before))
	}
}

// printedCommand is the last line of output that starts with prefix (a command printed on
// a line of its own, indented), trimmed; the test fails when there is none.
func printedCommand(t *testing.T, output, prefix string) string {
	t.Helper()
	var line string
	for _, l := range strings.Split(output, "\n") {
		if strings.HasPrefix(l, prefix) {
			line = strings.TrimSpace(l)
		}
	}
	if line == "" {
		t.Fatalf("no %q command on a line of its own in:\n%s", strings.TrimSpace(prefix), output)
	}
	return line
}

// pasteIntoShell runs a printed command line in sh as a person pasting it would, with
// "vcsnap" on PATH being this test binary acting as the CLI.
func pasteIntoShell(t *testing.T, line string) {
	t.Helper()
	bin := t.TempDir()
	os.Symlink(os.Args[0], filepath.Join(bin, "vcsnap"))
	sh := exec.Command("sh", "-c", line)
	sh.Env = append(os.Environ(), "VCSNAP_BE_CLI=1", "PATH="+bin+":"+os.Getenv("PATH"))
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the pasted command failed: %v\n%s\n%s", err, line, out)
	}
}
