package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/test/embedetcd"
	"github.com/vcsnap/vcsnap/test/faultproxy"
)

// The test binary doubles as the vcsnap binary, so the CLI runs as a real process that
// can be signalled and killed.
func TestMain(m *testing.M) {
	if os.Getenv("VCSNAP_BE_CLI") == "1" {
		main()
	}
	os.Exit(m.Run())
}

type result struct {
	code           int
	stdout, stderr string
}

func vcsnap(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "VCSNAP_BE_CLI=1"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

func startEtcd(t *testing.T) (*embedetcd.Etcd, *clientv3.Client) { return embedetcd.ForTest(t) }

// fill writes n keys of size bytes of random (incompressible) data, 100 per transaction.
func fill(t *testing.T, cli *clientv3.Client, n, size int) {
	t.Helper()
	rng := rand.New(rand.NewSource(int64(n)))
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			v := make([]byte, size)
			rng.Read(v)
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/registry/configmaps/ns/cm-%06d", j), string(v)))
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCLIExitCodesAndOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 50, 100)
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "backups", "snap1")

	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitOK || !strings.Contains(r.stdout, "50 keys") {
		t.Fatalf("create: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitRefused {
		t.Fatalf("create over an existing bundle: %+v, want exit %d", r, exitRefused)
	}
	r := vcsnap(t, nil, "snapshot", "list", "-o", "json", "file://"+dir+"/backups/")
	var entries []map[string]any
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &entries) != nil || len(entries) != 1 {
		t.Fatalf("list -o json: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "describe", url); r.code != exitOK || !strings.Contains(r.stdout, "Keys:") {
		t.Fatalf("describe: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "verify", url); r.code != exitOK {
		t.Fatalf("verify: %+v", r)
	}
	dst, dstCli := startEtcd(t)
	if r := vcsnap(t, nil, "restore", "--datastore", dst.URL, "-o", "json", url); r.code != exitOK {
		t.Fatalf("restore: %+v", r)
	}
	if resp, err := dstCli.Get(context.Background(), "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 50 {
		t.Fatalf("restored %v keys, %v", resp.Count, err)
	}
	if r := vcsnap(t, nil, "restore", "--datastore", dst.URL, url); r.code != exitRefused || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("restore into a non-empty target: %+v", r)
	}

	// A damaged copy: verify and restore fail with the corruption exit code.
	data, _ := os.ReadFile(filepath.Join(dir, "backups", "snap1"))
	data[len(data)/2] ^= 1
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, data, 0o644)
	if r := vcsnap(t, nil, "snapshot", "verify", "file://"+bad); r.code != exitCorrupt {
		t.Fatalf("verify of a corrupt bundle: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "describe", "file://"+dir+"/nope"); r.code != exitNotFound {
		t.Fatalf("describe of a missing bundle: %+v", r)
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a bundle"), 0o644)
	if r := vcsnap(t, nil, "snapshot", "verify", "file://"+dir+"/notes.txt"); r.code != exitUnsupported {
		t.Fatalf("verify of a foreign file: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "delete", "file://"+dir+"/notes.txt"); r.code != exitUnsupported {
		t.Fatalf("delete of a foreign file: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "create", url); r.code != exitUsage {
		t.Fatalf("create without --datastore: %+v", r)
	}
	if r := vcsnap(t, nil, "restore", "--datastore", "etcd://127.0.0.1:1", url); r.code != exitUnavailable {
		t.Fatalf("restore to an unreachable datastore: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "delete", url); r.code != exitOK {
		t.Fatalf("delete: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "list", "file://"+dir+"/backups/"); r.code != exitOK || strings.Contains(r.stdout, "snap1") {
		t.Fatalf("list after delete: %+v", r)
	}
}

// uploadWatcher wraps the in-process S3 server and reports the first UploadPart.
type uploadWatcher struct {
	h       http.Handler
	mu      sync.Mutex
	started chan struct{}
	seen    bool
}

// reset arms the watcher for the next upload and returns its channel.
func (u *uploadWatcher) reset() <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.started, u.seen = make(chan struct{}), false
	return u.started
}

func (u *uploadWatcher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") != "" {
		u.mu.Lock()
		if !u.seen && u.started != nil {
			u.seen = true
			close(u.started)
		}
		u.mu.Unlock()
	}
	u.h.ServeHTTP(w, r)
}

// Ctrl-C or SIGKILL in the middle of an upload leaves nothing that list shows. The link to
// etcd is stalled after a few MiB, so the process is caught mid-stream every time.
func TestKilledCreateLeavesNothingListed(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 4000, 4096) // 16 MiB of incompressible values

	backend := s3mem.New()
	if err := backend.CreateBucket("bkt"); err != nil {
		t.Fatal(err)
	}
	watcher := &uploadWatcher{h: gofakes3.New(backend).Server()}
	s3srv := httptest.NewServer(watcher)
	t.Cleanup(s3srv.Close)
	s3env := []string{"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test"}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		t.Setenv(k, "test")
	}
	s3store, err := storage.NewS3Store(context.Background(), storage.S3Options{Bucket: "bkt", Endpoint: s3srv.URL, PathStyle: true, Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		for _, kind := range []string{"file", "s3"} {
			t.Run(fmt.Sprintf("%s/%s", kind, sig), func(t *testing.T) {
				proxy, err := faultproxy.New(strings.TrimPrefix(src.URL, "etcd://"))
				if err != nil {
					t.Fatal(err)
				}
				defer proxy.Close()
				dir := t.TempDir()
				var url, listURL string
				var uploading <-chan struct{}
				switch kind {
				case "file":
					proxy.StallAfter(6 << 20)
					url, listURL = "file://"+dir+"/snap", "file://"+dir+"/"
				case "s3":
					proxy.StallAfter(12 << 20)
					uploading = watcher.reset()
					prefix := fmt.Sprintf("killed-%s/", sig)
					url = "s3://bkt/" + prefix + "snap?endpoint=" + s3srv.URL + "&force-path-style=true&part-size=5242880"
					listURL = "s3://bkt/" + prefix + "?endpoint=" + s3srv.URL + "&force-path-style=true"
				}
				cmd := exec.Command(os.Args[0], "snapshot", "create", "--datastore", "etcd://"+proxy.Addr, url)
				cmd.Env = append(append(os.Environ(), "VCSNAP_BE_CLI=1"), s3env...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan error, 1)
				go func() { exited <- cmd.Wait() }()
				// Wait until the upload is under way, and the process is still mid-stream.
				select {
				case <-proxy.Stalled():
				case err := <-exited:
					t.Fatalf("create finished before the stall: %v\n%s", err, stderr.String())
				case <-time.After(60 * time.Second):
					t.Fatal("the link never stalled")
				}
				switch kind {
				case "file":
					waitFor(t, func() bool {
						inc, _ := storage.NewFileStore("/").ListIncomplete(context.Background(), strings.TrimPrefix(dir, "/")+"/")
						return len(inc) == 1 && inc[0].Size > 0
					})
				case "s3":
					<-uploading
				}
				cmd.Process.Signal(sig)
				select {
				case err := <-exited:
					if sig == syscall.SIGINT {
						if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
							t.Fatalf("after Ctrl-C: %v, want exit %d\n%s", err, exitInterrupted, stderr.String())
						}
					}
				case <-time.After(60 * time.Second):
					t.Fatal("the process did not exit")
				}
				if r := vcsnap(t, s3env, "snapshot", "list", "-o", "json", listURL); r.code != exitOK || strings.TrimSpace(r.stdout) != "[]" {
					t.Fatalf("list after the kill shows %q (%+v)", r.stdout, r)
				}
				// A clean cancel also leaves no upload debris; a SIGKILL leaves an
				// invisible .part file or multipart upload that prune removes later.
				if sig == syscall.SIGINT {
					var inc []storage.ObjectInfo
					if kind == "file" {
						inc, _ = storage.NewFileStore("/").ListIncomplete(context.Background(), strings.TrimPrefix(dir, "/")+"/")
					} else {
						inc, _ = s3store.ListIncomplete(context.Background(), fmt.Sprintf("killed-%s/", sig))
					}
					if len(inc) != 0 {
						t.Fatalf("Ctrl-C left incomplete uploads: %v", inc)
					}
				}
			})
		}
	}
}

// waitFor polls a condition that the system under test makes true.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSafetyBackupURLKeepsOptions(t *testing.T) {
	at := time.Date(2026, 11, 21, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]string{
		"file:///b/snap": "file:///b/snap.pre-restore-20261121T030405.000Z",
		"s3://bkt/vc/snap?region=eu-west-1&endpoint=http://x": "s3://bkt/vc/snap.pre-restore-20261121T030405.000Z?region=eu-west-1&endpoint=http://x",
	} {
		if got := restore.SafetyBackupURL(in, false, at); got != want {
			t.Errorf("SafetyBackupURL(%q) = %q, want %q", in, got, want)
		}
	}
	// Beside a point-in-time prefix, not inside it.
	if got, want := restore.SafetyBackupURL("s3://bkt/vc/pitr/?region=x", true, at), "s3://bkt/vc/pitr.pre-restore-20261121T030405.000Z?region=x"; got != want {
		t.Errorf("prefix: %q, want %q", got, want)
	}
}

func TestCLIEncryption(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	const secretValue = "s3cr3t-db-password-0xC0FFEE"
	if _, err := srcCli.Put(context.Background(), "/registry/secrets/db/creds", secretValue); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	idFile, otherFile := filepath.Join(dir, "id.txt"), filepath.Join(dir, "other.txt")
	os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600)
	os.WriteFile(otherFile, []byte(other.String()+"\n"), 0o600)
	url := "file://" + filepath.Join(dir, "enc")

	var all strings.Builder
	run := func(args ...string) result {
		r := vcsnap(t, nil, args...)
		all.WriteString(r.stdout + r.stderr)
		return r
	}
	if r := run("snapshot", "create", "--datastore", src.URL, "--encrypt-recipient", id.Recipient().String(), url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	if r := run("snapshot", "describe", url); r.code != exitOK || !strings.Contains(r.stdout, "age, 1 recipient(s)") {
		t.Fatalf("describe: %+v", r)
	}
	if r := run("snapshot", "verify", url); r.code != exitNoKey || !strings.Contains(r.stderr, "encrypted") {
		t.Fatalf("verify without a key: %+v", r)
	}
	if r := run("snapshot", "verify", "--identity-file", otherFile, url); r.code != exitNoKey || !strings.Contains(r.stderr, "none of the given keys") {
		t.Fatalf("verify with the wrong key: %+v", r)
	}
	if r := run("snapshot", "verify", "--identity-file", idFile, url); r.code != exitOK {
		t.Fatalf("verify with the key: %+v", r)
	}
	dst, dstCli := startEtcd(t)
	if r := run("restore", "--datastore", dst.URL, url); r.code != exitNoKey {
		t.Fatalf("restore without a key: %+v", r)
	}
	// The wrong key, into a non-empty target with --force: refused before the target is
	// touched (no safety backup taken, no key changed), exit 8.
	dstCli.Put(context.Background(), "/registry/configmaps/a/keep", "mine")
	if r := run("restore", "--force", "--datastore", dst.URL, "--identity-file", otherFile, url); r.code != exitNoKey || !strings.Contains(r.stderr, "none of the given keys") {
		t.Fatalf("restore with the wrong key: %+v", r)
	}
	if got := keysOf(t, dstCli); len(got) != 1 || got["/registry/configmaps/a/keep"] != "mine" {
		t.Fatalf("a restore with the wrong key touched the target: %v", got)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "enc.pre-restore-*")); len(m) != 0 {
		t.Fatalf("a restore with the wrong key took a safety backup: %v", m)
	}
	if r := run("restore", "--force", "--datastore", dst.URL, "--identity-file", idFile, url); r.code != exitOK {
		t.Fatalf("restore with the key: %+v", r)
	}
	resp, err := dstCli.Get(context.Background(), "/registry/secrets/db/creds")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != secretValue {
		t.Fatalf("restored secret: %v %v", resp, err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "enc"))
	if bytes.Contains(data, []byte(secretValue)) || strings.Contains(all.String(), secretValue) {
		t.Fatal("the secret value appears in the bundle or in the output")
	}
}

func TestParseDays(t *testing.T) {
	for in, want := range map[string]time.Duration{"14d": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "0d": 0} {
		if got, err := parseDays(in); err != nil || got != want {
			t.Errorf("parseDays(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"d", "-1d", "x", "1w"} {
		if _, err := parseDays(bad); err == nil {
			t.Errorf("parseDays(%q) accepted", bad)
		}
	}
}
