package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/vcsnap/vcsnap/test/embedetcd"
	"github.com/vcsnap/vcsnap/test/faultproxy"
	"github.com/vcsnap/vcsnap/test/rig"
)

// The rough edges of issue 23 (items 5 and 9 to 11), through the CLI.

// noIMDS keeps the AWS SDK's credential chain on this machine: no instance metadata.
var noIMDS = []string{"AWS_EC2_METADATA_DISABLED=true"}

// lockedS3 serves a bucket in memory and answers 403 AccessDenied to reads of one key, as
// a bucket policy denying it would; with noCreds set, every request is refused as from an
// unknown access key.
type lockedS3 struct {
	h      http.Handler
	locked string
}

func (l *lockedS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/"+l.locked) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`))
		return
	}
	l.h.ServeHTTP(w, r)
}

// Items 5 and 9: an object that cannot be read is listed as unreadable and the exit code
// says so; prune decides nothing then; a missing bucket, an endpoint that refuses, and
// missing credentials each get an error naming the fix, before the datastore is read.
func TestStoreErrorsSayWhatToFix(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 10, 100)
	backend := s3mem.New()
	backend.CreateBucket("bkt")
	srv := httptest.NewServer(&lockedS3{h: gofakes3.New(backend).Server(), locked: "locked"})
	t.Cleanup(srv.Close)
	env := append([]string{"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test"}, noIMDS...)
	opts := "?endpoint=" + srv.URL + "&force-path-style=true&region=us-east-1"
	for _, name := range []string{"a", "locked"} {
		if r := vcsnap(t, env, "snapshot", "create", "--datastore", src.URL, "s3://bkt/vc1/"+name+opts); r.code != exitOK {
			t.Fatalf("create %s: %+v", name, r)
		}
	}
	r := vcsnap(t, env, "snapshot", "list", "s3://bkt/vc1"+opts)
	if r.code != exitStore || !strings.Contains(r.stdout, "unreadable") || !strings.Contains(r.stdout, "AccessDenied") || !strings.Contains(r.stdout, "vc1/a") {
		t.Fatalf("list with an unreadable bundle: %+v", r)
	}
	if r := vcsnap(t, env, "snapshot", "prune", "--keep-last", "1", "s3://bkt/vc1/"+opts); r.code != exitStore || !strings.Contains(r.stderr, "decides nothing") {
		t.Fatalf("prune with an unreadable bundle: %+v", r)
	}

	// A missing bucket, found before the datastore is read (it is not reachable at all).
	r = vcsnap(t, env, "snapshot", "create", "--datastore", "etcd://127.0.0.1:1", "s3://nobucket/x"+opts)
	if r.code != exitNotFound || !strings.Contains(r.stderr, `bucket "nobucket" does not exist`) {
		t.Fatalf("missing bucket: %+v", r)
	}
	// An endpoint that refuses connections: retries are logged, then the fix is named.
	r = vcsnap(t, env, "snapshot", "create", "--datastore", src.URL, "s3://bkt/x?endpoint=http://127.0.0.1:1&force-path-style=true&region=us-east-1")
	if r.code != exitStore || !strings.Contains(r.stderr, "retrying") || !strings.Contains(r.stderr, "cannot reach the S3 endpoint") {
		t.Fatalf("refused endpoint: %+v", r)
	}
	// No credentials anywhere.
	home := t.TempDir()
	r = vcsnap(t, append([]string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_PROFILE=", "HOME=" + home,
		"AWS_CONFIG_FILE=" + home + "/none", "AWS_SHARED_CREDENTIALS_FILE=" + home + "/none"}, noIMDS...),
		"snapshot", "create", "--datastore", src.URL, "s3://bkt/y"+opts)
	if r.code != exitStore || !strings.Contains(r.stderr, "no AWS credentials found") {
		t.Fatalf("no credentials: %+v", r)
	}
	// A datastore that refuses connections fails at once with exit 7.
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", "etcd://127.0.0.1:1", "file://"+t.TempDir()+"/z"); r.code != exitUnavailable || !strings.Contains(r.stderr, "connection refused") {
		t.Fatalf("refused etcd: %+v", r)
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Item 9: a create whose datastore stops answering says so every few seconds, and a
// watcher whose datastore is gone says it captures nothing.
func TestStalledRunsSaySo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 2000, 4096)
	proxy := faultproxy.Start(t, strings.TrimPrefix(src.URL, "etcd://"))
	proxy.StallAfter(2 << 20)
	create := startVcsnap(t, "snapshot", "create", "--datastore", "etcd://"+proxy.Addr, "file://"+t.TempDir()+"/snap")
	<-proxy.Stalled()
	waitForLong(t, 60*time.Second, func() bool { return strings.Contains(create.stderr.String(), "still working: no progress report") }, create.stderr)
	proxy.Release()
	create.stop(syscall.SIGINT)

	dir := t.TempDir()
	e, err := embedetcd.Start(filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(e.Close) }
	defer stop()
	w := startVcsnap(t, "snapshot", "watch", "--datastore", e.URL, "--delta-every", "1s", "file://"+dir+"/pitr/")
	defer w.stop(syscall.SIGTERM)
	waitForLong(t, 60*time.Second, func() bool { return strings.Contains(w.stderr.String(), "full") }, w.stderr)
	stop()
	waitForLong(t, 90*time.Second, func() bool { return strings.Contains(w.stderr.String(), "nothing is being captured") }, w.stderr)
}

// running is the CLI started as its own process, its stderr collected as it comes.
type running struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	exited chan error
}

func startVcsnap(t *testing.T, args ...string) *running {
	t.Helper()
	r := &running{cmd: exec.Command(os.Args[0], args...), stderr: &syncBuffer{}, exited: make(chan error, 1)}
	r.cmd.Env = append(os.Environ(), "VCSNAP_BE_CLI=1")
	r.cmd.Stderr = r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() { r.cmd.Process.Kill() }) // a test that failed half-way leaves nothing running
	return r
}

// stop signals the process and waits until it is gone.
func (r *running) stop(sig syscall.Signal) error {
	r.cmd.Process.Signal(sig)
	return <-r.exited
}

func waitForLong(t *testing.T, d time.Duration, cond func() bool, output *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v; the process said:\n%s", d, output.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Items 10 and 11: the smaller cases.
func TestSmallerRoughEdges(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 20, 100)
	srcCli.Put(context.Background(), "/other/keep", "outside the prefix")
	dir := t.TempDir()

	// create onto an existing directory fails before reading the datastore (which is not
	// even reachable here), exit 2.
	os.MkdirAll(filepath.Join(dir, "adir"), 0o755)
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", "etcd://127.0.0.1:1", "file://"+dir+"/adir"); r.code != exitUsage || !strings.Contains(r.stderr, "is a directory") {
		t.Fatalf("create onto a directory: %+v", r)
	}
	// A 0-key snapshot warns.
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL+"?prefix=/nothing/", "file://"+dir+"/empty"); r.code != exitOK || !strings.Contains(r.stderr, "holds no keys") {
		t.Fatalf("0-key snapshot: %+v", r)
	}
	// A prefix bundle records its prefix, and a forced restore replaces only keys under it.
	pre := "file://" + dir + "/prefixed"
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL+"?prefix=/registry/", pre); r.code != exitOK {
		t.Fatalf("create with a prefix: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "describe", pre); r.code != exitOK || !strings.Contains(r.stdout, "Key prefix:") {
		t.Fatalf("describe of a prefix bundle: %+v", r)
	}
	dst, dstCli := startEtcd(t)
	dstCli.Put(context.Background(), "/other/mine", "not in the bundle's prefix")
	dstCli.Put(context.Background(), "/registry/old", "replaced")
	if r := vcsnap(t, nil, "restore", "--force", "--datastore", dst.URL, pre); r.code != exitOK {
		t.Fatalf("restore --force of a prefix bundle: %+v", r)
	}
	got := keysOf(t, dstCli)
	if got["/other/mine"] != "not in the bundle's prefix" || got["/registry/old"] != "" || len(got) != 21 {
		t.Fatalf("after a forced restore of a /registry/ bundle: %d keys, /other/mine=%q, /registry/old=%q", len(got), got["/other/mine"], got["/registry/old"])
	}
	// Into a SQLite target it would replace everything: refused, exit 5.
	db := "sqlite://" + dir + "/state.db"
	if r := vcsnap(t, nil, "migrate", "--from", src.URL, "--to", db); r.code != exitOK {
		t.Fatalf("migrate: %+v", r)
	}
	if r := vcsnap(t, nil, "restore", "--force", "--datastore", db, pre); r.code != exitRefused || !strings.Contains(r.stderr, "outside it") {
		t.Fatalf("forced restore of a prefix bundle into SQLite: %+v", r)
	}

	// JSON: durations in seconds, sizes as size, errors as JSON too.
	r := vcsnap(t, nil, "-o", "json", "snapshot", "verify", pre)
	var v map[string]any
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &v) != nil || v["durationSeconds"] == nil || v["size"] == nil || v["duration"] != nil {
		t.Fatalf("verify -o json: %+v", r)
	}
	r = vcsnap(t, nil, "-o", "json", "snapshot", "verify", "file://"+dir+"/missing")
	if r.code != exitNotFound || json.Unmarshal([]byte(r.stdout), &v) != nil || v["exitCode"] != float64(exitNotFound) {
		t.Fatalf("an error under -o json: %+v", r)
	}

	// snapshot watch chain: compact with nothing to do succeeds; deleting a middle delta
	// is refused; --to-time after the chain's end says how far before it the chain ends.
	pitr := "file://" + dir + "/pitr/"
	w := startVcsnap(t, "snapshot", "watch", "--datastore", src.URL, "--delta-every", "200ms", pitr)
	waitForLong(t, 60*time.Second, func() bool {
		f, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-full"))
		return len(f) > 0
	}, w.stderr)
	for i := range 3 {
		srcCli.Put(context.Background(), "/registry/configmaps/ns/late", strings.Repeat("x", i+1))
		waitForLong(t, 60*time.Second, func() bool {
			d, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-delta"))
			return len(d) > i
		}, w.stderr)
	}
	w.stop(syscall.SIGTERM)
	deltas, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-delta"))
	sort.Strings(deltas)
	if r := vcsnap(t, nil, "snapshot", "delete", "file://"+deltas[0]); r.code != exitRefused || !strings.Contains(r.stderr, "--break-chain") {
		t.Fatalf("delete of a middle delta: %+v", r)
	}
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	empty, _ := startEtcd(t)
	if r := vcsnap(t, nil, "restore", "--datastore", empty.URL, "--to-time", later, pitr); r.code != exitOK || !strings.Contains(r.stdout, "The chain ends") {
		t.Fatalf("--to-time after the chain's end: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "compact", pitr); r.code != exitOK {
		t.Fatalf("compact: %+v", r)
	}
	if r := vcsnap(t, nil, "snapshot", "compact", pitr); r.code != exitOK || !strings.Contains(r.stdout, "Nothing to compact") {
		t.Fatalf("compact with nothing to do: %+v", r)
	}
}

// Issue 21 item 8: a 2 MiB value (legal in kine, and in an etcd with a larger request
// limit) is snapshotted; restoring it into an etcd with the default 1.5 MiB limit fails
// naming the key and the limit, leaving the target as it was; SQLite takes it whole.
func TestValuesOverEtcdsRequestLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, err := embedetcd.StartWith(t.TempDir(), func(c *embed.Config) { c.MaxRequestBytes = 4 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	srcCli, err := clientv3.New(clientv3.Config{Endpoints: []string{src.Endpoint}, MaxCallSendMsgSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srcCli.Close()
	big := strings.Repeat("b", 2<<20)
	if _, err := srcCli.Put(context.Background(), "/registry/configmaps/big/cm", big); err != nil {
		t.Fatal(err)
	}
	fill(t, srcCli, 50, 100)
	dir := t.TempDir()
	url := "file://" + dir + "/big"
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	dst, dstCli := startEtcd(t)
	dstCli.Put(context.Background(), "/registry/configmaps/a/mine", "old")
	r := vcsnap(t, nil, "restore", "--force", "--datastore", dst.URL, url)
	if r.code == exitOK || !strings.Contains(r.stderr, "/registry/configmaps/big/cm") || !strings.Contains(r.stderr, "--max-request-bytes") {
		t.Fatalf("restore of a 2 MiB value into a default etcd: %+v", r)
	}
	if got := keysOf(t, dstCli); len(got) != 1 || got["/registry/configmaps/a/mine"] != "old" {
		t.Fatalf("the failed restore left %d keys", len(got))
	}
	db := dir + "/state.db"
	if r := vcsnap(t, nil, "restore", "--datastore", "sqlite://"+db, url); r.code != exitOK {
		t.Fatalf("restore into SQLite: %+v", r)
	}
	out, err := exec.Command(rig.SystemTool(t, "sqlite3"), db,
		"SELECT length(value) FROM kine WHERE name = '/registry/configmaps/big/cm' ORDER BY id DESC LIMIT 1;").Output()
	if err != nil || strings.TrimSpace(string(out)) != "2097152" {
		t.Fatalf("the big value in SQLite: %q %v", out, err)
	}
}

// Issue 21 item 10: prune while a create is uploading into the same folder: the upload in
// progress is left alone (younger than the grace period), the create completes, and its
// bundle verifies and is listed; prune kept what its rules say.
func TestPruneRacingCreate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 1500, 4096)
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, "file://"+dir+"/"+n); r.code != exitOK {
			t.Fatalf("create %s: %+v", n, r)
		}
	}
	proxy := faultproxy.Start(t, strings.TrimPrefix(src.URL, "etcd://"))
	proxy.StallAfter(3 << 20)
	c := startVcsnap(t, "snapshot", "create", "--datastore", "etcd://"+proxy.Addr, "file://"+dir+"/c")
	<-proxy.Stalled()
	waitForLong(t, 60*time.Second, func() bool {
		p, _ := filepath.Glob(filepath.Join(dir, "c.vcsnap-*.part"))
		return len(p) == 1
	}, c.stderr)
	r := vcsnap(t, nil, "snapshot", "prune", "--keep-last", "1", "file://"+dir)
	if r.code != exitOK || !strings.Contains(r.stdout, "upload may still be running") {
		t.Fatalf("prune during a create: %+v", r)
	}
	proxy.Release()
	if err := <-c.exited; err != nil {
		t.Fatalf("the create prune raced: %v\n%s", err, c.stderr.String())
	}
	if r := vcsnap(t, nil, "snapshot", "verify", "file://"+dir+"/c"); r.code != exitOK {
		t.Fatalf("verify the raced bundle: %+v", r)
	}
	if got := names(dir); got != "b,c" {
		t.Fatalf("after prune --keep-last 1 during a create: %s, want b and the new c", got)
	}
}

// Issue 21 item 11: repeated restores into one SQLite file keep one rollback copy (this
// restore's), not one per restore, and say what they removed.
func TestRepeatedRestoresKeepOneRollbackCopy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 50, 100)
	dir := t.TempDir()
	url := "file://" + dir + "/snap"
	if r := vcsnap(t, nil, "snapshot", "create", "--datastore", src.URL, url); r.code != exitOK {
		t.Fatalf("create: %+v", r)
	}
	db := filepath.Join(dir, "data", "state.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	var last result
	for i := range 4 {
		args := []string{"restore", "--no-safety-backup", "--datastore", "sqlite://" + db, url}
		if i > 0 {
			args = append([]string{"restore", "--force"}, args[1:]...)
		}
		if last = vcsnap(t, nil, args...); last.code != exitOK {
			t.Fatalf("restore %d: %+v", i, last)
		}
	}
	old, _ := filepath.Glob(db + "*.vcsnap-old-*")
	stamps := map[string]bool{}
	for _, o := range old {
		stamps[o[strings.LastIndex(o, ".vcsnap-old-"):]] = true
	}
	if len(stamps) != 1 || !strings.Contains(last.stderr, "Removed the copies earlier restores kept") {
		t.Fatalf("after 4 restores: %d rollback copies %v\n%s", len(stamps), old, last.stderr)
	}
	// The one kept is the last restore's, and its printed rollback command works.
	pasteIntoShell(t, printedCommand(t, last.stderr, "  cd "))
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("no state.db after the rollback: %v", err)
	}
}

// Issue 21 item 13: one watcher per prefix. A second watcher of the prefix waits while the
// first renews its claim, and takes over once the first dies (SIGKILL, so it never
// releases) and its claim expires; it continues the chain, and releases the claim when it
// stops.
func TestOneWatcherPerPrefix(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	src, srcCli := startEtcd(t)
	fill(t, srcCli, 30, 100)
	dir := t.TempDir()
	pitr := "file://" + dir + "/pitr/"
	args := []string{"snapshot", "watch", "--datastore", src.URL, "--delta-every", "300ms", "--lock-ttl", "3s", pitr}
	a := startVcsnap(t, args...)
	waitForLong(t, 60*time.Second, func() bool {
		f, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-full"))
		return len(f) == 1
	}, a.stderr)
	b := startVcsnap(t, args...)
	waitForLong(t, 60*time.Second, func() bool { return strings.Contains(b.stderr.String(), "another watcher keeps the chains") }, b.stderr)
	srcCli.Put(context.Background(), "/registry/configmaps/ns/while-a", "1")
	waitForLong(t, 60*time.Second, func() bool {
		d, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-delta"))
		return len(d) >= 1
	}, b.stderr)
	if f, _ := filepath.Glob(filepath.Join(dir, "pitr", "*-full")); len(f) != 1 {
		t.Fatalf("a second chain was started while the first watcher ran: %v", f)
	}
	a.stop(syscall.SIGKILL)
	waitForLong(t, 60*time.Second, func() bool { return strings.Contains(b.stderr.String(), "took over the prefix") }, b.stderr)
	resp, err := srcCli.Put(context.Background(), "/registry/configmaps/ns/after-takeover", "2")
	if err != nil {
		t.Fatal(err)
	}
	waitForLong(t, 60*time.Second, func() bool {
		r := vcsnap(t, nil, "snapshot", "list", "--chains", "-o", "json", pitr)
		return strings.Contains(r.stdout, fmt.Sprintf(`"toRevision": %d`, resp.Header.Revision))
	}, b.stderr)
	if err := b.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("the second watcher: %v\n%s", err, b.stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "pitr", ".vcsnap-watch.lock")); !os.IsNotExist(err) {
		t.Fatalf("the lock outlived the watcher that stopped: %v", err)
	}
	dst, dstCli := startEtcd(t)
	if r := vcsnap(t, nil, "restore", "--datastore", dst.URL, "--to-revision", fmt.Sprint(resp.Header.Revision), pitr); r.code != exitOK {
		t.Fatalf("restore to the revision written after the takeover: %+v", r)
	}
	if got := keysOf(t, dstCli); got["/registry/configmaps/ns/after-takeover"] != "2" || got["/registry/configmaps/ns/while-a"] != "1" {
		t.Fatalf("the chain across the takeover misses writes: %d keys", len(got))
	}
}
