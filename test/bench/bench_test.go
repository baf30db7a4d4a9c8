// Package bench measures vcsnap against the peers' methods on the same data, in one run:
// `make bench` (VCSNAP_BENCH=1). It writes a markdown table and JSON to test/bench/results/.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vcsnap/vcsnap/test/rig"
)

// Row is one measured operation.
type Row struct {
	Keys       int     `json:"keys"`
	Operation  string  `json:"operation"`
	Method     string  `json:"method"` // "vcsnap" or the baseline's name
	Seconds    float64 `json:"seconds"`
	KeysPerSec float64 `json:"keysPerSecond"`
	MBPerSec   float64 `json:"mbPerSecond"` // MB of value bytes per second
	OutBytes   int64   `json:"outputBytes,omitempty"`
	PeakRSSMiB float64 `json:"peakRssMiB,omitempty"`
	// CPU seconds (user+sys) of the measured process, and of the datastore server it
	// talks to (etcd, kine, PostgreSQL with its exited backends) over the same interval:
	// on a shared machine they say more than the wall time.
	CPUSeconds       float64 `json:"cpuSeconds,omitempty"`
	ServerCPUSeconds float64 `json:"serverCpuSeconds,omitempty"`
}

// sample is one measurement.
type sample struct {
	d           time.Duration
	rss, cpu    float64
	server      float64
	hasServerNo bool
}

// then adds a second step run after the first (etcdctl save, then zstd).
func (s sample) then(o sample) sample {
	return sample{d: s.d + o.d, rss: max(s.rss, o.rss), cpu: s.cpu + o.cpu, server: s.server + o.server}
}

// serverCPU returns a function giving the CPU seconds the processes used since the call,
// their reaped children included (PostgreSQL's backends).
func serverCPU(t *testing.T, procs ...*rig.Process) func() float64 {
	read := func() float64 {
		var sum float64
		for _, p := range procs {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			// Fields after the command name (which may hold spaces): utime is the 14th field.
			f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
			for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
				v, _ := strconv.ParseFloat(f[i], 64)
				sum += v
			}
		}
		return sum / 100 // clock ticks (USER_HZ)
	}
	start := read()
	return func() float64 { return read() - start }
}

// selfCPU is this process's user+sys CPU time, for the baselines run in-process.
func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func TestBenchmarks(t *testing.T) {
	if os.Getenv("VCSNAP_BENCH") != "1" {
		t.Skip("benchmarks run with `make bench` (VCSNAP_BENCH=1)")
	}
	sizes := []int{10000, 100000}
	if s := os.Getenv("VCSNAP_BENCH_KEYS"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	if s := os.Getenv("VCSNAP_BENCH_REPEATS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("VCSNAP_BENCH_REPEATS=%q: want a count of 1 or more", s)
		}
		repeats = n
	}
	bin := buildVcsnap(t)
	var rows []Row
	for _, n := range sizes {
		rows = append(rows, benchEtcd(t, bin, n)...)
	}
	writeResults(t, rows)
}

// fullMaxKeys: above it only the snapshot rows run (create, verify and their baselines;
// the sequential one-Put-per-key baselines alone would take the better part of an hour).
const fullMaxKeys = 200_000

func buildVcsnap(t *testing.T) string {
	out, err := rig.BuildVCSnap(t.TempDir(), "bench")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// run runs a command and returns its wall time and peak RSS. The RSS comes from
// /usr/bin/time: a child exec'd straight from this process would report this process's
// resident pages at fork time as its own peak.
// servers are the datastore processes whose CPU time is measured with it.
func run(t *testing.T, env []string, servers []*rig.Process, name string, args ...string) sample {
	t.Helper()
	rssFile := filepath.Join(t.TempDir(), "rss")
	server := serverCPU(t, servers...)
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M %U %S", "-o", rssFile, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	srv := server()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatal(err)
	}
	var kib, user, sys float64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%f %f %f", &kib, &user, &sys); err != nil {
		t.Fatalf("peak RSS and CPU from /usr/bin/time: %q", b)
	}
	return sample{d: d, rss: kib / 1024, cpu: user + sys, server: srv}
}

// repeats is how many times each quick measurement runs ($VCSNAP_BENCH_REPEATS, make
// bench BENCH_REPEATS=N); the row reports the run with the median wall time (the machine
// is a shared VM: single runs vary by 20%). The sequential one-write-per-key baselines
// run once: they take half a minute each, which evens out the noise by itself.
var repeats = 3

// median runs measure repeats times (i counts from 0; each run gets fresh targets from
// it) and returns the run with the median wall time.
func median(measure func(i int) sample) sample {
	runs := make([]sample, repeats)
	for i := range runs {
		runs[i] = measure(i)
	}
	sort.Slice(runs, func(a, b int) bool { return runs[a].d < runs[b].d })
	return runs[(repeats-1)/2]
}

// dataset describes what was generated.
type dataset struct {
	keys       int
	valueBytes int64
}

// generate fills an etcd with Kubernetes-shaped keys: protobuf-like values averaging about
// 2 KiB with a tail of 10-500 KiB objects, some history (updates) and deleted keys.
func generate(t *testing.T, cli *clientv3.Client, n int) dataset {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewSource(int64(n)))
	kinds := []string{"pods", "configmaps", "secrets", "events", "deployments", "replicasets", "services", "endpointslices"}
	work := make(chan []clientv3.Op, 8)
	var wg sync.WaitGroup
	var werr error
	var mu sync.Mutex
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ops := range work {
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					mu.Lock()
					werr = err
					mu.Unlock()
				}
			}
		}()
	}
	var ds dataset
	var batch, later []clientv3.Op
	size := 0
	flush := func() {
		if len(batch) > 0 {
			work <- batch
			batch, size = nil, 0
		}
	}
	add := func(op clientv3.Op, n int) {
		if len(batch) >= 100 || size+n > 900<<10 {
			flush()
		}
		batch = append(batch, op)
		size += n
	}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("/registry/%s/ns-%03d/%s-%08x", kinds[i%len(kinds)], i%300, kinds[i%len(kinds)], rng.Uint32())
		vlen := 600 + rng.Intn(2400)
		if rng.Intn(1000) < 2 {
			vlen = 10<<10 + rng.Intn(490<<10) // the tail: big ConfigMaps, Helm releases, CRDs
		}
		v := objectBytes(rng, vlen)
		if i%10 == 0 {
			v[len(v)-1] = 'x' // the value after the later update
		}
		ds.keys++
		ds.valueBytes += int64(len(v))
		add(clientv3.OpPut(key, string(v)), len(key)+len(v))
		switch {
		case i%10 == 0: // history: a later update of the same key
			later = append(later, clientv3.OpPut(key, string(v[:len(v)-1])+"x"))
		case i%50 == 1: // and deleted keys
			later = append(later, clientv3.OpDelete(key))
			ds.keys--
			ds.valueBytes -= int64(len(v))
		}
	}
	flush()
	for _, op := range later {
		add(op, len(op.KeyBytes())+len(op.ValueBytes()))
	}
	flush()
	close(work)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	return ds
}

// objectBytes looks like a protobuf-encoded Kubernetes object: a k8s\0 header, field names,
// labels and IDs; it compresses about as well as real objects do.
func objectBytes(rng *rand.Rand, n int) []byte {
	words := []string{"metadata", "name", "namespace", "labels", "app.kubernetes.io/name", "spec", "containers",
		"image", "registry.example/app:v1.2.3", "resources", "limits", "cpu", "memory", "status", "conditions",
		"Ready", "True", "lastTransitionTime", "2026-11-21T09:00:00Z", "managedFields", "kubectl", "Update", "v1"}
	b := make([]byte, 0, n+32)
	b = append(b, "k8s\x00\n\x02v1\x12\x03Pod\x1a"...)
	for len(b) < n {
		switch rng.Intn(4) {
		case 0:
			b = fmt.Appendf(b, "%08x-%04x", rng.Uint32(), rng.Intn(65536))
		default:
			w := words[rng.Intn(len(words))]
			b = append(b, byte(len(w)))
			b = append(b, w...)
		}
	}
	return b[:n]
}

// startEtcd starts an etcd with room for the 1M-key dataset (3.7 GB of database).
func startEtcd(t *testing.T) *rig.Etcd {
	return rig.StartEtcd(t, rig.WithEtcdArgs("--quota-backend-bytes=8589934592"))
}

func benchEtcd(t *testing.T, bin string, n int) []Row {
	src := startEtcd(t)
	cli := src.Client(t)
	start := time.Now()
	ds := generate(t, cli, n)
	t.Logf("%d keys, %.1f MB of values generated in %s", ds.keys, float64(ds.valueBytes)/1e6, time.Since(start).Round(time.Millisecond))
	dir := t.TempDir()
	srcURL := "etcd://" + strings.TrimPrefix(src.Endpoint, "http://")
	mb := float64(ds.valueBytes) / 1e6
	row := func(op, method string, m sample, out int64) Row {
		s := m.d.Seconds()
		return Row{Keys: ds.keys, Operation: op, Method: method, Seconds: s, KeysPerSec: float64(ds.keys) / s, MBPerSec: mb / s,
			OutBytes: out, PeakRSSMiB: m.rss, CPUSeconds: m.cpu, ServerCPUSeconds: m.server}
	}
	var rows []Row
	srcP := []*rig.Process{src.Process}

	bundle := filepath.Join(dir, "snap")
	m := median(func(int) sample {
		os.Remove(bundle + ".new")
		return run(t, nil, srcP, bin, "snapshot", "create", "-q", "--datastore", srcURL, "file://"+bundle+".new")
	})
	if err := os.Rename(bundle+".new", bundle); err != nil {
		t.Fatal(err)
	}
	rows = append(rows, row("snapshot create (file)", "vcsnap", m, fileSize(t, bundle)))

	db := filepath.Join(dir, "etcd.db")
	m = median(func(int) sample {
		os.Remove(db)
		return run(t, nil, srcP, rig.Tool(t, "etcdctl"), "--endpoints", src.Endpoint, "snapshot", "save", db)
	})
	rows = append(rows, row("snapshot create (file)", "etcdctl snapshot save (no compression)", m, fileSize(t, db)))
	keep(t, db)
	m = m.then(median(func(int) sample { return run(t, nil, nil, "zstd", "-q", "-3", "-f", db, "-o", db+".zst") }))
	rows = append(rows, row("snapshot create (file)", "etcdctl snapshot save + zstd -3", m, fileSize(t, db+".zst")))

	// The same to MinIO: vcsnap takes S3 credentials only from the environment. MinIO
	// runs for these rows only: it keeps working on what it received for a while after
	// (a second of etcd's CPU in the next row when it ran on).
	minio := rig.StartMinIO(t)
	minio.CreateBucket(t, "bench")
	s3env := []string{"AWS_ACCESS_KEY_ID=" + minio.AccessKey, "AWS_SECRET_ACCESS_KEY=" + minio.SecretKey,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
	m = median(func(i int) sample {
		s3url := fmt.Sprintf("s3://bench/snap-%d-%d?endpoint=%s&force-path-style=true&region=%s", n, i, minio.Endpoint, minio.Region)
		return run(t, s3env, srcP, bin, "snapshot", "create", "-q", "--datastore", srcURL, s3url)
	})
	rows = append(rows, row("snapshot create (MinIO)", "vcsnap", m, 0))
	minio.Stop()

	m = median(func(int) sample { return run(t, nil, nil, bin, "snapshot", "verify", "-q", "file://"+bundle) })
	rows = append(rows, row("snapshot verify", "vcsnap", m, 0))
	if n > fullMaxKeys {
		return rows
	}

	m = median(func(int) sample {
		dst := startEtcd(t)
		defer dst.Stop()
		dstURL := "etcd://" + strings.TrimPrefix(dst.Endpoint, "http://")
		return run(t, nil, []*rig.Process{dst.Process}, bin, "restore", "-q", "--datastore", dstURL, "file://"+bundle)
	})
	rows = append(rows, row("restore (etcd API)", "vcsnap", m, 0))

	m = median(func(i int) sample {
		edir := filepath.Join(dir, fmt.Sprintf("etcd-dir-%d", i))
		if err := os.Mkdir(edir, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(edir)
		return run(t, nil, nil, bin, "restore", "-q", "--datastore", "etcd-dir://"+filepath.Join(edir, "etcd"), "file://"+bundle)
	})
	rows = append(rows, row("restore (offline data dir)", "vcsnap", m, 0))
	m = median(func(i int) sample {
		out := filepath.Join(dir, fmt.Sprintf("restored-%d", i))
		defer os.RemoveAll(out)
		return run(t, nil, nil, rig.Tool(t, "etcdutl"), "snapshot", "restore", db, "--data-dir", out,
			"--bump-revision", "1000000", "--mark-compacted")
	})
	rows = append(rows, row("restore (offline data dir)", "etcdutl snapshot restore", m, 0))

	seq := startEtcd(t)
	m = putPerKey(t, cli, seq)
	rows = append(rows, row("restore (etcd API)", "one Put per key, sequential (vcluster's method)", m, 0))
	seq.Stop()
	src.Stop()
	return append(rows, benchKine(t, bin, bundle, row)...)
}

// benchKine measures kine's SQL datastores, filled from the etcd run's bundle (vcsnap's
// restore into them is measured too), with history and deletions written through kine.
func benchKine(t *testing.T, bin, bundle string, row func(op, method string, m sample, out int64) Row) []Row {
	dir := t.TempDir()
	var rows []Row
	state := filepath.Join(dir, "kine", "state.db")
	if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
		t.Fatal(err)
	}
	m := median(func(i int) sample {
		for _, f := range []string{state, state + "-wal", state + "-shm"} {
			os.Remove(f)
		}
		return run(t, nil, nil, bin, "restore", "-q", "--datastore", "sqlite://"+state, "file://"+bundle)
	})
	rows = append(rows, row("restore (kine SQLite)", "vcsnap", m, 0))
	k := rig.StartKine(t, rig.SQLiteDSN(state))
	kineHistory(t, k.Endpoint)
	k.Stop()
	from := "sqlite://" + state
	keep(t, bundle, state)

	out := filepath.Join(dir, "snap-sqlite")
	m = median(func(int) sample {
		os.Remove(out)
		return run(t, nil, nil, bin, "snapshot", "create", "-q", "--datastore", from, "file://"+out)
	})
	rows = append(rows, row("snapshot create (file) from kine SQLite", "vcsnap", m, fileSize(t, out)))
	backup := filepath.Join(dir, "backup.db")
	m = median(func(int) sample {
		os.Remove(backup)
		return run(t, nil, nil, "sqlite3", state, ".backup "+backup)
	})
	rows = append(rows, row("snapshot create (file) from kine SQLite", "sqlite3 .backup (no compression)", m, fileSize(t, backup)))
	m = m.then(median(func(int) sample { return run(t, nil, nil, "zstd", "-q", "-3", "-f", backup, "-o", backup+".zst") }))
	rows = append(rows, row("snapshot create (file) from kine SQLite", "sqlite3 .backup + zstd -3", m, fileSize(t, backup+".zst")))

	m = median(func(int) sample {
		etcd := startEtcd(t)
		defer etcd.Stop()
		return run(t, nil, []*rig.Process{etcd.Process}, bin, "migrate", "-q", "--from", from, "--to", "etcd://"+strings.TrimPrefix(etcd.Endpoint, "http://"))
	})
	rows = append(rows, row("migrate SQLite -> etcd (running)", "vcsnap", m, 0))
	m = median(func(i int) sample {
		mdir := filepath.Join(dir, fmt.Sprintf("migrated-%d", i))
		if err := os.Mkdir(mdir, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(mdir)
		return run(t, nil, nil, bin, "migrate", "-q", "--from", from, "--to", "etcd-dir://"+filepath.Join(mdir, "etcd"))
	})
	rows = append(rows, row("migrate SQLite -> etcd (data dir)", "vcsnap", m, 0))
	m = k3sMigration(t, state)
	rows = append(rows, row("migrate SQLite -> etcd (running)", "k3s's method: one List through kine, one Put per key", m, 0))

	pg := rig.StartPostgres(t)
	pgURL := func(db string) string {
		return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", pg.User, net.JoinHostPort(pg.Host, strconv.Itoa(pg.Port)), db)
	}
	pgEnv := []string{"VCSNAP_DATASTORE_PASSWORD=" + pg.Password}
	m = median(func(i int) sample {
		// An empty database each time (one that does not exist yet: the restore creates
		// it); the last run fills the rig's own, which kine then serves.
		db := fmt.Sprintf("bench%d", i)
		if i == repeats-1 {
			db = pg.Database
		}
		return run(t, pgEnv, []*rig.Process{pg.Process}, bin, "restore", "-q", "--datastore", pgURL(db), "file://"+bundle)
	})
	rows = append(rows, row("restore (kine PostgreSQL)", "vcsnap", m, 0))
	k = rig.StartKine(t, pg.KineDSN())
	kineHistory(t, k.Endpoint)
	k.Stop()
	out = filepath.Join(dir, "snap-pg")
	m = median(func(int) sample {
		os.Remove(out)
		return run(t, pgEnv, []*rig.Process{pg.Process}, bin, "snapshot", "create", "-q", "--datastore", pgURL(pg.Database), "file://"+out)
	})
	rows = append(rows, row("snapshot create (file) from kine PostgreSQL", "vcsnap", m, fileSize(t, out)))
	pg.Stop()
	return rows
}

// kineHistory updates every 20th key and deletes every 100th through kine's etcd API,
// the way the kube-apiserver does (compare-and-swap transactions of one operation).
func kineHistory(t *testing.T, endpoint string) {
	ctx := context.Background()
	cli := rig.EtcdClient(t, endpoint, nil)
	resp, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for i, kv := range resp.Kvs {
		key := string(kv.Key)
		var op clientv3.Op
		switch {
		case i%100 == 7:
			op = clientv3.OpDelete(key)
		case i%20 == 3:
			cur, err := cli.Get(ctx, key)
			if err != nil || len(cur.Kvs) == 0 {
				t.Fatalf("get %s through kine: %v", key, err)
			}
			op = clientv3.OpPut(key, string(cur.Kvs[0].Value)+"u")
		default:
			continue
		}
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).Then(op).Else(clientv3.OpGet(key)).Commit()
		if err != nil || !r.Succeeded {
			t.Fatalf("update %s through kine: %v (succeeded %v)", key, err, r != nil && r.Succeeded)
		}
	}
}

// k3sMigration re-creates k3s's SQLite -> etcd migration (pkg/etcd): kine serves the
// SQLite file, one unpaged List reads every key, and each is written with its own Put
// into a fresh etcd, one after another.
func k3sMigration(t *testing.T, state string) sample {
	ctx := context.Background()
	k := rig.StartKine(t, rig.SQLiteDSN(state))
	defer k.Stop()
	etcd := startEtcd(t)
	defer etcd.Stop()
	from, to := rig.EtcdClient(t, k.Endpoint, nil), etcd.Client(t)
	server, cpu0 := serverCPU(t, k.Process, etcd.Process), selfCPU()
	start := time.Now()
	resp, err := from.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if _, err := to.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
			t.Fatal(err)
		}
	}
	return sample{d: time.Since(start), cpu: selfCPU() - cpu0, server: server()}
}

// putPerKey re-creates vcluster's restore: one write per key, one after another.
func putPerKey(t *testing.T, from *clientv3.Client, target *rig.Etcd) sample {
	ctx := context.Background()
	resp, err := from.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	to := target.Client(t)
	server, cpu0 := serverCPU(t, target.Process), selfCPU()
	start := time.Now()
	for _, kv := range resp.Kvs {
		if _, err := to.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
			t.Fatal(err)
		}
	}
	return sample{d: time.Since(start), cpu: selfCPU() - cpu0, server: server()}
}

// keep copies the inputs of the measured commands into $VCSNAP_BENCH_KEEP, when set, so
// one command can be re-run or profiled alone (--cpuprofile) without the whole harness.
func keep(t *testing.T, paths ...string) {
	dir := os.Getenv("VCSNAP_BENCH_KEEP")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if out, err := exec.Command("cp", p, filepath.Join(dir, filepath.Base(p))).CombinedOutput(); err != nil {
			t.Fatalf("keep %s: %v\n%s", p, err, out)
		}
	}
	t.Logf("kept %v in %s", paths, dir)
}

func fileSize(t *testing.T, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func writeResults(t *testing.T, rows []Row) {
	var md strings.Builder
	fmt.Fprintf(&md, "| keys | operation | method | seconds | CPU s | server CPU s | keys/s | MB/s (values) | output | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		out, rss, srv := "", "", ""
		if r.OutBytes > 0 {
			out = fmt.Sprintf("%.1f MB", float64(r.OutBytes)/1e6)
		}
		if r.PeakRSSMiB > 0 {
			rss = fmt.Sprintf("%.0f MiB", r.PeakRSSMiB)
		}
		if r.ServerCPUSeconds > 0 {
			srv = fmt.Sprintf("%.2f", r.ServerCPUSeconds)
		}
		fmt.Fprintf(&md, "| %d | %s | %s | %.2f | %.2f | %s | %.0f | %.1f | %s | %s |\n", r.Keys, r.Operation, r.Method, r.Seconds,
			r.CPUSeconds, srv, r.KeysPerSec, r.MBPerSec, out, rss)
	}
	md.WriteString(ratios(rows))
	dir := "results"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(rows, "", "  ")
	os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644)
	os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644)
	t.Logf("\n%s", md.String())
}

// ratios compares each vcsnap row with its baseline, per dataset size, against the
// targets of issue 10 (x > 1 means vcsnap is faster or smaller).
func ratios(rows []Row) string {
	find := func(keys int, op, method string) *Row {
		for i := range rows {
			if rows[i].Keys == keys && rows[i].Operation == op && strings.HasPrefix(rows[i].Method, method) {
				return &rows[i]
			}
		}
		return nil
	}
	var b strings.Builder
	b.WriteString("\n| keys | comparison | vcsnap | baseline | ratio | ratio of CPU (client + server) | target |\n|---|---|---|---|---|---|---|\n")
	seen := map[int]bool{}
	for _, r := range rows {
		if seen[r.Keys] {
			continue
		}
		seen[r.Keys] = true
		n := r.Keys
		cmp := func(what, op, method, baseOp, base, target string, size bool) {
			v, bl := find(n, op, method), find(n, baseOp, base)
			if v == nil || bl == nil {
				return
			}
			if size {
				fmt.Fprintf(&b, "| %d | %s | %.1f MB | %.1f MB | %.2fx | | %s |\n", n, what, float64(v.OutBytes)/1e6, float64(bl.OutBytes)/1e6,
					float64(bl.OutBytes)/float64(v.OutBytes), target)
				return
			}
			cpu := ""
			if vc, bc := v.CPUSeconds+v.ServerCPUSeconds, bl.CPUSeconds+bl.ServerCPUSeconds; vc > 0 && bc > 0 {
				cpu = fmt.Sprintf("%.2fx (%.2f s vs %.2f s)", bc/vc, vc, bc)
			}
			fmt.Fprintf(&b, "| %d | %s | %.2f s | %.2f s | %.2fx | %s | %s |\n", n, what, v.Seconds, bl.Seconds, bl.Seconds/v.Seconds, cpu, target)
		}
		const create = "snapshot create (file)"
		cmp("snapshot vs etcdctl snapshot save", create, "vcsnap", create, "etcdctl snapshot save (no", ">= 1x", false)
		cmp("bundle size vs zstd -3 of the db", create, "vcsnap", create, "etcdctl snapshot save + zstd", ">= 1x", true)
		cmp("snapshot to MinIO vs to a file", "snapshot create (MinIO)", "vcsnap", create, "vcsnap", "upload not the bottleneck (~1x)", false)
		cmp("restore vs one Put per key", "restore (etcd API)", "vcsnap", "restore (etcd API)", "one Put per key", ">= 15x", false)
		cmp("etcd-dir restore vs etcdutl snapshot restore", "restore (offline data dir)", "vcsnap", "restore (offline data dir)", "etcdutl", ">= 0.67x (within 1.5x)", false)
		cmp("SQLite -> running etcd vs k3s's method", "migrate SQLite -> etcd (running)", "vcsnap", "migrate SQLite -> etcd (running)", "k3s", ">= 15x", false)
		cmp("SQLite -> etcd data dir vs k3s's method", "migrate SQLite -> etcd (data dir)", "vcsnap", "migrate SQLite -> etcd (running)", "k3s", ">= 15x", false)
		var peak float64
		var which string
		for _, x := range rows {
			if x.Keys == n && x.Method == "vcsnap" && x.PeakRSSMiB > peak {
				peak, which = x.PeakRSSMiB, x.Operation
			}
		}
		fmt.Fprintf(&b, "| %d | highest peak RSS of a vcsnap run | %.0f MiB (%s) | | | | <= 100 MiB |\n", n, peak, which)
	}
	return b.String()
}
