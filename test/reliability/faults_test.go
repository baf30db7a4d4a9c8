package reliability

import (
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/test/faultproxy"
	"github.com/vcsnap/vcsnap/test/rig"
)

// tally counts trial outcomes and injected faults for the report line.
type tally struct {
	mu       sync.Mutex
	outcomes map[string]int
	faults   map[string]int
}

func newTally() *tally { return &tally{outcomes: map[string]int{}, faults: map[string]int{}} }

func (t *tally) add(outcome string, faults map[string]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.outcomes[outcome]++
	for k, v := range faults {
		t.faults[k] += v
	}
}

func (t *tally) String() string {
	return fmt.Sprintf("outcomes %v; faults injected %v", t.outcomes, t.faults)
}

func tcpFaults(p *faultproxy.Proxy) map[string]int {
	out := map[string]int{}
	for k, v := range p.Injected() {
		if k != faultproxy.None {
			out[k.String()] += v
		}
	}
	return out
}

// tcpPlan faults the first few connections of a trial (reset, cut or a stall, after a
// seeded number of bytes in the chosen direction) and lets later ones through, so a
// client that reconnects and retries can still finish.
func tcpPlan(r *rand.Rand, faulty int, span int64, upstream bool) func(int) faultproxy.Fault {
	plan := make([]faultproxy.Fault, faulty)
	for i := range plan {
		kind := []faultproxy.Kind{faultproxy.Reset, faultproxy.Cut, faultproxy.Stall}[r.Intn(3)]
		plan[i] = faultproxy.Fault{Kind: kind, After: r.Int63n(span), Upstream: upstream,
			For: time.Duration(500+r.Intn(2500)) * time.Millisecond}
	}
	return func(conn int) faultproxy.Fault {
		if conn < len(plan) {
			return plan[conn]
		}
		return faultproxy.Fault{}
	}
}

// fatalTrial: every third trial the fault is fatal (planFor), so the suites exercise the
// failure branch they make claims about, not only faults that retries absorb.
func fatalTrial(i int) bool { return i%3 == 2 }

// planFor is tcpPlan, or for a fatal trial a plan that resets every connection after a
// few bytes: no retry gets through.
func planFor(r *rand.Rand, i, faulty int, span int64, upstream bool) func(int) faultproxy.Fault {
	if !fatalTrial(i) {
		return tcpPlan(r, faulty, span, upstream)
	}
	after := r.Int63n(64 << 10)
	return func(int) faultproxy.Fault {
		return faultproxy.Fault{Kind: faultproxy.Reset, After: after, Upstream: upstream}
	}
}

// requireFailures fails a suite whose fatal trials did not all fail, or that had none.
func requireFailures(t *testing.T, suite string, tl *tally, fatal int, failed ...string) {
	t.Helper()
	got := 0
	for _, o := range failed {
		got += tl.outcomes[o]
	}
	if fatal == 0 || got < fatal {
		t.Errorf("%s: %d fatal trial(s), %d run(s) failed (%v): the failure branch was not exercised", suite, fatal, got, tl.outcomes)
	}
}

func hostPort(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return strings.TrimPrefix(endpoint, "etcd://")
	}
	return u.Host
}

// requireClearFailure checks a failed run said what went wrong in one Error line.
// checkFaultySnapshot judges a snapshot create run through a faulty link: a bundle it
// made restores to exactly the source's state (restored under checkDir), and a failure
// is clear and leaves no bundle at name. It returns the outcome for the tally.
func checkFaultySnapshot(t *testing.T, c *cli, res result, name, checkDir string, source state, trial string) string {
	t.Helper()
	if res.Code != 0 {
		requireClearFailure(t, res, trial)
		if _, err := os.Stat(name); err == nil {
			t.Errorf("%s: a failed snapshot left a bundle", trial)
		}
		return "create failed cleanly"
	}
	restored := filepath.Join(checkDir, "state.db")
	os.MkdirAll(checkDir, 0o755)
	c.mustRun(t, "restore", "--datastore", "sqlite://"+restored, "file://"+name)
	if d := readState(t, "sqlite://"+restored, open.Options{}).diff(source); d != "" {
		t.Errorf("%s: the snapshot taken through the faulty link differs from the source: %s", trial, d)
	}
	return "created, equal to the source"
}

func requireClearFailure(t *testing.T, res result, trial string) {
	t.Helper()
	if !strings.Contains(res.Stderr, "Error: ") || res.Code == 0 {
		t.Errorf("%s: a failure must end with a clear error: %s", trial, res)
	}
}

// TestFaultsS3 puts a misbehaving link between vcsnap and a real MinIO: requests answered
// 503 SlowDown, connections reset before an answer, uploads cut midway and downloads cut
// midway, chosen per request from a seed. `snapshot create` must either finish a bundle
// that verifies over a clean link, or fail with a clear error and nothing visible; a
// restore through the same link either restores everything or leaves no target at all.
// One trial answers every request with 503 SlowDown: vcsnap must give up, saying so.
func TestFaultsS3(t *testing.T) {
	n := count("FAULT_TRIALS", 20, 3)
	m := rig.StartMinIO(t)
	m.CreateBucket(t, "faults")
	c := minioCLI(t, m)
	src := startCrashSource(t, c, 6000) // ~12 MB of values: several 5 MiB parts
	proxy, err := faultproxy.NewHTTP(m.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	via := func(endpoint, key string) string {
		q := url.Values{}
		q.Set("endpoint", endpoint)
		q.Set("force-path-style", "true")
		q.Set("region", m.Region)
		q.Set("part-size", strconv.Itoa(5<<20))
		return "s3://faults/" + key + "?" + q.Encode()
	}
	sourceState := readState(t, src.sqliteURL, open.Options{})
	tl := newTally()
	dir := t.TempDir()
	for i := range n {
		r := rand.New(rand.NewSource(seed()*7919 + int64(i)))
		p := 0.1 + 0.3*r.Float64()
		maxFaults := 2 + r.Intn(8)
		var mu sync.Mutex
		injected := 0
		proxy.SetPlan(func(_ int, req *http.Request) faultproxy.HTTPFault {
			mu.Lock()
			defer mu.Unlock()
			if injected >= maxFaults || r.Float64() > p {
				return faultproxy.HTTPFault{}
			}
			injected++
			kinds := []faultproxy.HTTPKind{faultproxy.SlowDown, faultproxy.ResetReq}
			switch {
			case req.Method == http.MethodPut && req.ContentLength > 0:
				kinds = append(kinds, faultproxy.CutUpload)
			case req.Method == http.MethodGet:
				kinds = append(kinds, faultproxy.CutBody)
			}
			return faultproxy.HTTPFault{Kind: kinds[r.Intn(len(kinds))], After: r.Int63n(4 << 20)}
		})
		before := proxy.Injected()
		name := fmt.Sprintf("trial-%03d", i)
		trial := fmt.Sprintf("S3 trial %d (seed %d, p=%.2f, at most %d faults)", i, seed(), p, maxFaults)
		res := c.run(t, "snapshot", "create", "--datastore", src.sqliteURL, via(proxy.URL, name))
		outcome := "created"
		if res.Code != 0 {
			outcome = "create failed cleanly"
			requireClearFailure(t, res, trial)
			if d := c.run(t, "snapshot", "describe", via(m.Endpoint, name)); d.Code != 4 {
				t.Errorf("%s: after a failed create, the bundle's name must not exist (exit 4): %s", trial, d)
			}
		} else {
			c.mustRun(t, "snapshot", "verify", via(m.Endpoint, name))
			// Restore through the faulty link into a fresh SQLite file.
			target := filepath.Join(dir, name, "state.db")
			os.MkdirAll(filepath.Dir(target), 0o755)
			rr := c.run(t, "restore", "--datastore", "sqlite://"+target, via(proxy.URL, name))
			if rr.Code == 0 {
				if d := readState(t, "sqlite://"+target, open.Options{}).diff(sourceState); d != "" {
					t.Errorf("%s: restored through the faulty link but the target differs: %s", trial, d)
				}
				outcome = "created; restored"
			} else {
				requireClearFailure(t, rr, trial)
				if _, err := os.Stat(target); err == nil {
					t.Errorf("%s: a failed restore left a target file behind", trial)
				}
				outcome = "created; restore failed cleanly"
			}
		}
		after := proxy.Injected()
		faults := map[string]int{}
		for k, v := range after {
			if d := v - before[k]; d > 0 {
				faults[k.String()] = d
			}
		}
		t.Logf("%s: %s, faults %v, exit %d in %v", trial, outcome, faults, res.Code, res.Took.Round(time.Millisecond))
		tl.add(outcome, faults)
		if t.Failed() {
			return
		}
	}

	// Throttled without end: vcsnap retries within its limit, then stops and says why.
	// The SDK's backoff makes this take about two minutes: make reliability only.
	trials, endless := n, "endless 503 not run (make reliability runs it)"
	if fullRun() {
		proxy.SetPlan(func(int, *http.Request) faultproxy.HTTPFault { return faultproxy.HTTPFault{Kind: faultproxy.SlowDown} })
		res := c.run(t, "snapshot", "create", "--datastore", src.sqliteURL, via(proxy.URL, "always-throttled"))
		requireClearFailure(t, res, "always 503 SlowDown")
		if !strings.Contains(res.Stderr, "503") || !strings.Contains(res.Stderr, "attempts") {
			t.Errorf("an endless 503 SlowDown should be named in the error with the attempts spent: %s", res)
		}
		if d := c.run(t, "snapshot", "describe", via(m.Endpoint, "always-throttled")); d.Code != 4 {
			t.Errorf("always throttled: nothing may be visible: %s", d)
		}
		t.Logf("always 503 SlowDown: gave up after %v: %s", res.Took.Round(time.Millisecond), errorLine(res))
		trials++
		endless = fmt.Sprintf("endless 503 gave up after %v with a clear error (10 attempts)", res.Took.Round(time.Second))
	}
	report(t, "Faults between vcsnap and MinIO (503 SlowDown, resets, cut uploads and downloads)", trials,
		fmt.Sprintf("%s; every created bundle verified; no failed run left a visible bundle or a restore target; %s", tl, endless))
}

// TestFaultsEtcd puts a proxy that resets, cuts and stalls connections between vcsnap and a
// real etcd: as the snapshot source, and as the target of `restore --force`. A snapshot
// either verifies and holds exactly the source's keys, or fails clearly with nothing
// visible; a restore ends with the new keys, or the old ones, or (when undoing over the
// same bad link failed too) a logged undo command that brings the old keys back.
func TestFaultsEtcd(t *testing.T) {
	n := count("FAULT_TRIALS", 20, 3)
	c := newCLI(t)
	src := rig.StartEtcd(t)
	fillEtcd(t, src.Client(t), "/registry/configmaps/faults/cm-", 3000, 1024, seed())
	srcURL := "etcd://" + hostPort(src.Endpoint)
	sourceState := readState(t, srcURL, open.Options{})
	dir := t.TempDir()

	target := rig.StartEtcd(t)
	targetURL := "etcd://" + hostPort(target.Endpoint)
	oldEtcd := rig.StartEtcd(t)
	fillEtcd(t, oldEtcd.Client(t), "/registry/secrets/old/s-", 500, 512, seed()+3)
	oldBundle := "file://" + filepath.Join(dir, "old.bundle")
	c.mustRun(t, "snapshot", "create", "--datastore", "etcd://"+hostPort(oldEtcd.Endpoint), oldBundle)
	oldEtcd.Stop()
	c.mustRun(t, "restore", "--datastore", targetURL, oldBundle)
	oldState := readState(t, targetURL, open.Options{})
	good := "file://" + filepath.Join(dir, "good.bundle")
	c.mustRun(t, "snapshot", "create", "--datastore", srcURL, good)

	srcProxy, tgtProxy := faultproxy.Start(t, hostPort(src.Endpoint)), faultproxy.Start(t, hostPort(target.Endpoint))
	snaps, restores := newTally(), newTally()
	for i := range n {
		r := rand.New(rand.NewSource(seed()*104729 + int64(i)))
		trial := fmt.Sprintf("etcd trial %d (seed %d)", i, seed())

		// Snapshot through the faulty link.
		before := tcpFaults(srcProxy)
		srcProxy.SetPlan(planFor(r, i, 1+r.Intn(3), 1<<20, false))
		name := filepath.Join(dir, fmt.Sprintf("trial-%03d", i))
		res := c.run(t, "snapshot", "create", "--datastore", "etcd://"+srcProxy.Addr, "file://"+name)
		outcome := checkFaultySnapshot(t, c, res, name, filepath.Join(dir, fmt.Sprintf("check-%03d", i)), sourceState, trial)
		snaps.add(outcome, diffCounts(before, tcpFaults(srcProxy)))

		// Restore --force through the faulty link (client-to-server bytes are the writes).
		before = tcpFaults(tgtProxy)
		tgtProxy.SetPlan(planFor(r, i, 1+r.Intn(3), 1<<20, true))
		bundle := filepath.Join(dir, fmt.Sprintf("restore-%03d.bundle", i))
		if err := os.Link(strings.TrimPrefix(good, "file://"), bundle); err != nil {
			t.Fatal(err)
		}
		rr := c.run(t, "restore", "--force", "--datastore", "etcd://"+tgtProxy.Addr, "file://"+bundle)
		got := readState(t, targetURL, open.Options{})
		switch {
		case rr.Code == 0:
			outcome = "restored"
			if d := got.diff(sourceState); d != "" {
				t.Errorf("%s: restore reported success but the target differs: %s", trial, d)
			}
		case got.diff(oldState) == "":
			outcome = "restore failed, old keys in place"
			requireClearFailure(t, rr, trial)
		default:
			outcome = "restore failed, undone by its undo command"
			requireClearFailure(t, rr, trial)
			u := undoRe.FindStringSubmatch(rr.Stderr)
			if u == nil {
				t.Fatalf("%s: a failed restore left the target neither old nor new (%s) and logged no undo command: %s", trial, got.diff(oldState), rr)
			}
			runUndo(t, c, strings.Replace(u[1], "etcd://"+tgtProxy.Addr, targetURL, 1), targetURL, oldState, trial)
		}
		if rr.Code == 0 {
			// Back to the old keys for the next trial, with the run's own undo command.
			u := undoRe.FindStringSubmatch(rr.Stderr)
			if u == nil {
				t.Fatalf("%s: no undo command logged: %s", trial, rr)
			}
			runUndo(t, c, strings.Replace(u[1], "etcd://"+tgtProxy.Addr, targetURL, 1), targetURL, oldState, trial)
		}
		restores.add(outcome, diffCounts(before, tcpFaults(tgtProxy)))
		t.Logf("%s: snapshot exit %d %s; restore exit %d (%s) %s", trial, res.Code, errorLine(res), rr.Code, outcome, errorLine(rr))
		if t.Failed() {
			return
		}
	}
	fatal := 0
	for i := range n {
		if fatalTrial(i) {
			fatal++
		}
	}
	requireFailures(t, "etcd snapshot", snaps, fatal, "create failed cleanly")
	requireFailures(t, "etcd restore", restores, fatal, "restore failed, old keys in place", "restore failed, undone by its undo command")
	report(t, "Faults between vcsnap and etcd (reset, cut, stall): snapshot source", n,
		fmt.Sprintf("%d of them fatal (every connection reset); ", fatal)+snaps.String()+"; every created bundle restored equal to the source; failures left no bundle")
	report(t, "Faults between vcsnap and etcd (reset, cut, stall): restore --force target", n,
		fmt.Sprintf("%d of them fatal; ", fatal)+restores.String()+"; never half-written without its undo: each failure left the old keys or was brought back by the logged undo command")
}

func diffCounts(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// TestFaultsPostgres puts the faulty link between vcsnap and a real PostgreSQL (kine's
// table, read and written directly): a snapshot verifies and equals the source or fails
// clearly with nothing visible; a restore --force, written in one transaction, ends with
// the new keys or leaves the table exactly as it was.
func TestFaultsPostgres(t *testing.T) {
	n := count("FAULT_TRIALS", 20, 3)
	c := newCLI(t)
	// The source: kine's table in one database; the target: a second PostgreSQL.
	srcDS := rig.StartDatastore(t, rig.KindPostgres)
	ec := srcDS.Client(t)
	for i := range 1500 { // kine takes no multi-key transactions
		if _, err := ec.Put(t.Context(), fmt.Sprintf("/registry/configmaps/pg/cm-%05d", i), pseudoRandom(seed()+int64(i), 1024)); err != nil {
			t.Fatal(err)
		}
	}
	srcDS.StopKine()
	pgURL := func(pg *rig.Postgres, hostport string) string {
		return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", pg.User, hostport, pg.Database)
	}
	src := srcDS.Postgres
	srcAddr := net.JoinHostPort(src.Host, strconv.Itoa(src.Port))
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte(src.Password+"\n"), 0o600)
	sourceState := readState(t, pgURL(src, srcAddr), open.Options{Password: src.Password})

	tgt := rig.StartPostgres(t)
	tgtAddr := net.JoinHostPort(tgt.Host, strconv.Itoa(tgt.Port))
	tpw := filepath.Join(dir, "tpw")
	os.WriteFile(tpw, []byte(tgt.Password+"\n"), 0o600)
	oldEtcd := rig.StartEtcd(t)
	fillEtcd(t, oldEtcd.Client(t), "/registry/secrets/old/s-", 500, 512, seed()+5)
	oldBundle := "file://" + filepath.Join(dir, "old.bundle")
	c.mustRun(t, "snapshot", "create", "--datastore", "etcd://"+hostPort(oldEtcd.Endpoint), oldBundle)
	oldEtcd.Stop()
	c.mustRun(t, "restore", "--datastore", pgURL(tgt, tgtAddr), "--datastore-password-file", tpw, oldBundle)
	oldState := readState(t, pgURL(tgt, tgtAddr), open.Options{Password: tgt.Password})
	good := "file://" + filepath.Join(dir, "good.bundle")
	c.mustRun(t, "snapshot", "create", "--datastore", pgURL(src, srcAddr), "--datastore-password-file", pw, good)

	srcProxy, tgtProxy := faultproxy.Start(t, srcAddr), faultproxy.Start(t, tgtAddr)
	snaps, restores := newTally(), newTally()
	for i := range n {
		r := rand.New(rand.NewSource(seed()*1299709 + int64(i)))
		trial := fmt.Sprintf("PostgreSQL trial %d (seed %d)", i, seed())
		before := tcpFaults(srcProxy)
		srcProxy.SetPlan(planFor(r, i, 1+r.Intn(2), 2<<20, false))
		name := filepath.Join(dir, fmt.Sprintf("trial-%03d", i))
		res := c.run(t, "snapshot", "create", "--datastore", pgURL(src, srcProxy.Addr), "--datastore-password-file", pw, "file://"+name)
		outcome := checkFaultySnapshot(t, c, res, name, filepath.Join(dir, fmt.Sprintf("check-%03d", i)), sourceState, trial)
		snaps.add(outcome, diffCounts(before, tcpFaults(srcProxy)))

		before = tcpFaults(tgtProxy)
		tgtProxy.SetPlan(planFor(r, i, 1+r.Intn(2), 2<<20, true))
		rr := c.run(t, "restore", "--force", "--no-safety-backup", "--datastore", pgURL(tgt, tgtProxy.Addr), "--datastore-password-file", tpw, good)
		got := readState(t, pgURL(tgt, tgtAddr), open.Options{Password: tgt.Password})
		switch {
		case rr.Code == 0:
			outcome = "restored"
			if d := got.diff(sourceState); d != "" {
				t.Errorf("%s: restore reported success but the target differs: %s", trial, d)
			}
			c.mustRun(t, "restore", "--force", "--no-safety-backup", "--datastore", pgURL(tgt, tgtAddr), "--datastore-password-file", tpw, oldBundle)
		case got.diff(oldState) == "":
			outcome = "restore failed, table as it was"
			requireClearFailure(t, rr, trial)
		default:
			t.Fatalf("%s: a failed restore changed the PostgreSQL target (%s): %s", trial, got.diff(oldState), rr)
		}
		restores.add(outcome, diffCounts(before, tcpFaults(tgtProxy)))
		t.Logf("%s: snapshot exit %d %s; restore exit %d (%s) %s", trial, res.Code, errorLine(res), rr.Code, outcome, errorLine(rr))
		if t.Failed() {
			return
		}
	}
	fatal := 0
	for i := range n {
		if fatalTrial(i) {
			fatal++
		}
	}
	requireFailures(t, "PostgreSQL snapshot", snaps, fatal, "create failed cleanly")
	requireFailures(t, "PostgreSQL restore", restores, fatal, "restore failed, table as it was")
	report(t, "Faults between vcsnap and PostgreSQL (reset, cut, stall): snapshot source", n,
		fmt.Sprintf("%d of them fatal (every connection reset); ", fatal)+snaps.String()+"; every created bundle restored equal to the source; failures left no bundle")
	report(t, "Faults between vcsnap and PostgreSQL (reset, cut, stall): restore --force target", n,
		fmt.Sprintf("%d of them fatal; ", fatal)+restores.String()+"; every failed restore left the table exactly as it was")
}

// errorLine is a run's final error line, for the log.
func errorLine(res result) string {
	if i := strings.LastIndex(res.Stderr, "Error: "); i >= 0 {
		return strings.TrimSpace(res.Stderr[i:])
	}
	return ""
}
