package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/test/rig"
)

// s3URL is the vcsnap store URL of key in a MinIO bucket.
func s3URL(m *rig.MinIO, bucket, key string) string {
	q := url.Values{}
	q.Set("endpoint", m.Endpoint)
	q.Set("force-path-style", "true")
	q.Set("region", m.Region)
	return "s3://" + bucket + "/" + key + "?" + q.Encode()
}

func minioCLI(t *testing.T, m *rig.MinIO) *cli {
	return newCLI(t, "AWS_ACCESS_KEY_ID="+m.AccessKey, "AWS_SECRET_ACCESS_KEY="+m.SecretKey)
}

// killed runs vcsnap and SIGKILLs it after delay (or lets it finish first). It returns
// the run's stderr, whether the kill landed before the process ended, and how long a run
// that ended first took.
func (c *cli) killed(t *testing.T, delay time.Duration, args ...string) (stderr string, landed bool, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd, _, errb, _ := c.command(ctx, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("vcsnap %s failed before the kill: %v\n%s", strings.Join(args, " "), err, errb)
		}
		return errb.String(), false, time.Since(start)
	case <-time.After(delay): // the seeded moment of the crash
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := <-done
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	landed = ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
	if !landed && err != nil {
		t.Fatalf("vcsnap %s failed before the kill: %v\n%s", strings.Join(args, " "), err, errb)
	}
	return errb.String(), landed, time.Since(start)
}

// listVerified lists a prefix and verifies every listed bundle; it returns how many.
// urlOf names a listed bundle as a URL vcsnap opens (list shows S3 URLs without their
// endpoint options).
func listVerified(t *testing.T, c *cli, prefix string, urlOf func(name string) string, trial string) int {
	t.Helper()
	res := c.mustRun(t, "-o", "json", "snapshot", "list", prefix)
	var entries []*snapshot.Entry
	if err := json.Unmarshal([]byte(res.Stdout), &entries); err != nil {
		t.Fatalf("%s: list output: %v\n%s", trial, err, res)
	}
	for _, e := range entries {
		if e.Problem != "" || e.Manifest == nil {
			t.Errorf("%s: list shows %s with problem %q: a killed snapshot must leave nothing visible", trial, e.Name, e.Problem)
			continue
		}
		if v := c.run(t, "snapshot", "verify", urlOf(e.Name)); v.Code != 0 {
			t.Errorf("%s: listed bundle %s fails verify: %s", trial, e.Name, v)
		}
	}
	return len(entries)
}

// crashSource is a filled datastore for the crash suites, in the two kinds asked for.
type crashSource struct {
	etcdURL, sqliteURL string
	bundle             string // file:// bundle of the same data
}

func startCrashSource(t *testing.T, c *cli, keys int) crashSource {
	t.Helper()
	etcd := rig.StartEtcd(t)
	fillEtcd(t, etcd.Client(t), "/registry/configmaps/crash/cm-", keys, 2048, seed())
	dir := t.TempDir()
	s := crashSource{etcdURL: "etcd://" + strings.TrimPrefix(etcd.Endpoint, "http://"),
		sqliteURL: "sqlite://" + filepath.Join(dir, "src", "state.db"), bundle: "file://" + filepath.Join(dir, "source.bundle")}
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	c.mustRun(t, "snapshot", "create", "--datastore", s.etcdURL, s.bundle)
	c.mustRun(t, "restore", "--datastore", s.sqliteURL, s.bundle)
	return s
}

// TestCrashSnapshot SIGKILLs `vcsnap snapshot create` at seeded random moments (uniform
// over 1.2x an uninterrupted run), from SQLite and etcd, into a file store and MinIO
// alternately. After every kill: everything listed verifies, and the same name can be
// snapshotted again (a killed upload leaves nothing that blocks the next one).
func TestCrashSnapshot(t *testing.T) {
	n := count("CRASH_TRIALS", 50, 5)
	m := rig.StartMinIO(t)
	m.CreateBucket(t, "crash")
	c := minioCLI(t, m)
	src := startCrashSource(t, c, 8000)
	total, landed := 0, 0
	for _, kind := range []string{"sqlite", "etcd"} {
		t.Run(kind, func(t *testing.T) {
			ds := map[string]string{"sqlite": src.sqliteURL, "etcd": src.etcdURL}[kind]
			dir := t.TempDir()
			stores := []func(name string) string{
				func(name string) string { return "file://" + filepath.Join(dir, name) },
				func(name string) string { return s3URL(m, "crash", kind+"/"+name) },
			}
			urlOf := []func(name string) string{
				func(name string) string { return "file:///" + name },
				func(name string) string { return s3URL(m, "crash", name) },
			}
			prefixes := []string{"file://" + dir + "/", s3URL(m, "crash", kind+"/")}
			// The kill window: the faster of two uninterrupted runs (the first is cold).
			full := time.Hour
			for range 2 {
				start := time.Now()
				c.mustRun(t, "snapshot", "create", "--overwrite", "--datastore", ds, stores[1]("reference"))
				full = min(full, time.Since(start))
			}
			r := rand.New(rand.NewSource(seed() + int64(len(kind))))
			// Trials go on until n kills landed mid-run (a kill after the run ended is a
			// trial too, but proves less), at most 3n trials.
			kills, trials := 0, 0
			for i := 0; kills < n && i < 3*n; i++ {
				trials++
				delay := time.Duration(r.Int63n(int64(full * 12 / 10)))
				store := i % 2
				name := fmt.Sprintf("trial-%03d", i)
				trial := fmt.Sprintf("%s trial %d (seed %d, kill after %v, %s)", kind, i, seed(), delay.Round(time.Millisecond), []string{"file", "s3"}[store])
				_, ok, took := c.killed(t, delay, "snapshot", "create", "--datastore", ds, stores[store](name))
				if ok {
					kills++
				} else {
					full = min(full, took) // runs got faster (warm caches, a quieter machine): narrow the window
				}
				listVerified(t, c, prefixes[store], urlOf[store], trial)
				// The name is free again, or holds a complete bundle when the kill came late.
				again := c.run(t, "snapshot", "create", "--overwrite", "--datastore", ds, stores[store](name))
				if again.Code != 0 {
					t.Errorf("%s: snapshot to the same name after the kill: %s", trial, again)
				}
				if t.Failed() {
					return
				}
			}
			if got := listVerified(t, c, prefixes[0], urlOf[0], "end"); got != (trials+1)/2 {
				t.Errorf("file store lists %d bundles, want %d", got, (trials+1)/2)
			}
			if got := listVerified(t, c, prefixes[1], urlOf[1], "end"); got != trials/2+1 {
				t.Errorf("MinIO lists %d bundles, want %d", got, trials/2+1)
			}
			if kills < n {
				t.Errorf("%s: only %d of %d trials were killed mid-run: the kill window does not fit the run", kind, kills, trials)
			}
			t.Logf("%s: %d trials, %d killed mid-run (uninterrupted run %v)", kind, trials, kills, full.Round(time.Millisecond))
			total += trials
			landed += kills
		})
	}
	report(t, "SIGKILL `snapshot create` (SQLite and etcd sources; file and MinIO stores)", total,
		fmt.Sprintf("%d killed mid-run (the rest ended before the kill); every listed bundle verified; 0 partial bundles visible; the same name snapshotted again after every kill", landed))
}

// undoRe finds the undo command a forced restore prints on a line of its own, before its
// first write.
var undoRe = regexp.MustCompile(`(?m)^  (vcsnap restore --force [^\n]+)$`)

// TestCrashRestore SIGKILLs `vcsnap restore --force` into a SQLite file and into etcd,
// both holding other data, at seeded random moments. After every kill the target holds
// its old keys, or the new ones completely, or else the undo command the run logged
// before its first write brings the old keys back. The suite runs that command after
// every trial that left anything but the old keys, so each trial starts from the old
// state again.
func TestCrashRestore(t *testing.T) {
	n := count("CRASH_TRIALS", 50, 5)
	c := newCLI(t)
	src := startCrashSource(t, c, 8000)
	newState := readState(t, src.sqliteURL, open.Options{})
	total, landed := 0, 0
	outcomes := map[string]int{}
	for _, kind := range []string{"sqlite", "etcd"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			var target string
			switch kind {
			case "sqlite":
				os.MkdirAll(filepath.Join(dir, "target"), 0o755)
				target = "sqlite://" + filepath.Join(dir, "target", "state.db")
			case "etcd":
				e := rig.StartEtcd(t)
				target = "etcd://" + strings.TrimPrefix(e.Endpoint, "http://")
			}
			// The old state: other keys, so old and new are told apart.
			oldEtcd := rig.StartEtcd(t)
			fillEtcd(t, oldEtcd.Client(t), "/registry/secrets/old/s-", 3000, 1024, seed()+7)
			oldBundle := "file://" + filepath.Join(dir, "old.bundle")
			c.mustRun(t, "snapshot", "create", "--datastore", "etcd://"+strings.TrimPrefix(oldEtcd.Endpoint, "http://"), oldBundle)
			oldEtcd.Stop()
			c.mustRun(t, "restore", "--datastore", target, oldBundle)
			oldState := readState(t, target, open.Options{})

			// One uninterrupted restore times the window the kills fall in.
			bundle := func(i int) string {
				p := filepath.Join(dir, fmt.Sprintf("bundle-%03d", i))
				if err := os.Link(strings.TrimPrefix(src.bundle, "file://"), p); err != nil {
					t.Fatal(err)
				}
				return "file://" + p
			}
			full := time.Hour
			for i := range 2 {
				start := time.Now()
				res := c.mustRun(t, "restore", "--force", "--datastore", target, bundle(998+i))
				full = min(full, time.Since(start))
				undo := undoRe.FindStringSubmatch(res.Stderr)
				if undo == nil {
					t.Fatalf("the restore logged no undo command:\n%s", res)
				}
				runUndo(t, c, undo[1], target, oldState, "after the timing run")
			}

			r := rand.New(rand.NewSource(seed() + 100 + int64(len(kind))))
			kills, trials := 0, 0
			for i := 0; kills < n && i < 3*n; i++ {
				trials++
				delay := time.Duration(r.Int63n(int64(full * 12 / 10)))
				trial := fmt.Sprintf("%s trial %d (seed %d, kill after %v)", kind, i, seed(), delay.Round(time.Millisecond))
				stderr, ok, took := c.killed(t, delay, "restore", "--force", "--datastore", target, bundle(i))
				if ok {
					kills++
				} else {
					full = min(full, took)
				}
				got := readState(t, target, open.Options{})
				outcome := "old state"
				switch {
				case got.diff(oldState) == "":
				case got.diff(newState) == "":
					outcome = "new state"
				default:
					outcome = "partial, undone by the logged command"
				}
				if outcome != "old state" {
					u := undoRe.FindStringSubmatch(stderr)
					if u == nil {
						t.Fatalf("%s: the target holds neither the old keys (%s) nor the new (%s), and the run logged no undo command:\n%s",
							trial, got.diff(oldState), got.diff(newState), stderr)
					}
					runUndo(t, c, u[1], target, oldState, trial)
				}
				outcomes[outcome]++
				if t.Failed() {
					return
				}
			}
			if kills < n {
				t.Errorf("%s: only %d of %d trials were killed mid-run: the kill window does not fit the run", kind, kills, trials)
			}
			t.Logf("%s: %d trials, %d killed mid-run (uninterrupted restore %v)", kind, trials, kills, full.Round(time.Millisecond))
			total += trials
			landed += kills
		})
	}
	t.Logf("outcomes: %v", outcomes)
	report(t, "SIGKILL `restore --force` (SQLite and etcd targets)", total,
		fmt.Sprintf("%d killed mid-run (the rest ended before the kill); after the kill: old state %d, new state complete %d, partial %d (each brought back to the old state by the logged undo command)",
			landed, outcomes["old state"], outcomes["new state"], outcomes["partial, undone by the logged command"]))
}

// runUndo runs the undo command a restore logged and requires the old state back.
func runUndo(t *testing.T, c *cli, command, target string, old state, trial string) {
	t.Helper()
	args := strings.Fields(command)
	if len(args) < 2 || args[0] != "vcsnap" || !strings.Contains(command, "--datastore "+target+" ") {
		t.Fatalf("%s: the undo command %q does not name the target %s", trial, command, target)
	}
	c.mustRun(t, append(args[1:], "--no-safety-backup")...)
	if d := readState(t, target, open.Options{}).diff(old); d != "" {
		t.Fatalf("%s: after the undo command %q the target is not its old state: %s", trial, command, d)
	}
}
