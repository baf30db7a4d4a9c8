// Package bench measures vcsnap against the peers' methods on the same data, in one run:
// `make bench` (VCSNAP_BENCH=1). It writes a markdown table and JSON to test/bench/results/.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	bin := buildVcsnap(t)
	var rows []Row
	for _, n := range sizes {
		rows = append(rows, benchEtcd(t, bin, n)...)
	}
	writeResults(t, rows)
}

func buildVcsnap(t *testing.T) string {
	out := filepath.Join(t.TempDir(), "vcsnap")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "github.com/vcsnap/vcsnap/cmd/vcsnap")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build vcsnap: %v\n%s", err, b)
	}
	return out
}

// run runs a command and returns its wall time and peak RSS. The RSS comes from
// /usr/bin/time: a child exec'd straight from this process would report this process's
// resident pages at fork time as its own peak.
func run(t *testing.T, env []string, name string, args ...string) (time.Duration, float64) {
	t.Helper()
	rssFile := filepath.Join(t.TempDir(), "rss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatal(err)
	}
	kib, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		t.Fatalf("peak RSS from /usr/bin/time: %q", b)
	}
	return d, kib / 1024
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

func benchEtcd(t *testing.T, bin string, n int) []Row {
	src := rig.StartEtcd(t, rig.WithEtcdArgs("--quota-backend-bytes=8589934592"))
	cli := src.Client(t)
	start := time.Now()
	ds := generate(t, cli, n)
	t.Logf("%d keys, %.1f MB of values generated in %s", ds.keys, float64(ds.valueBytes)/1e6, time.Since(start).Round(time.Millisecond))
	dir := t.TempDir()
	srcURL := "etcd://" + strings.TrimPrefix(src.Endpoint, "http://")
	mb := float64(ds.valueBytes) / 1e6
	row := func(op, method string, d time.Duration, out int64, rss float64) Row {
		s := d.Seconds()
		return Row{Keys: ds.keys, Operation: op, Method: method, Seconds: s, KeysPerSec: float64(ds.keys) / s, MBPerSec: mb / s, OutBytes: out, PeakRSSMiB: rss}
	}
	var rows []Row

	bundle := filepath.Join(dir, "snap")
	d, rss := run(t, nil, bin, "snapshot", "create", "-q", "--datastore", srcURL, "file://"+bundle)
	rows = append(rows, row("snapshot create (file)", "vcsnap", d, fileSize(t, bundle), rss))

	db := filepath.Join(dir, "etcd.db")
	d, rss = run(t, nil, rig.Tool(t, "etcdctl"), "--endpoints", src.Endpoint, "snapshot", "save", db)
	rows = append(rows, row("snapshot create (file)", "etcdctl snapshot save (no compression)", d, fileSize(t, db), rss))
	d2, _ := run(t, nil, "zstd", "-q", "-3", "-f", db, "-o", db+".zst")
	rows = append(rows, row("snapshot create (file)", "etcdctl snapshot save + zstd -3", d+d2, fileSize(t, db+".zst"), rss))

	d, rss = run(t, nil, bin, "snapshot", "verify", "-q", "file://"+bundle)
	rows = append(rows, row("snapshot verify", "vcsnap", d, 0, rss))

	dst := rig.StartEtcd(t, rig.WithEtcdArgs("--quota-backend-bytes=8589934592"))
	dstURL := "etcd://" + strings.TrimPrefix(dst.Endpoint, "http://")
	d, rss = run(t, nil, bin, "restore", "-q", "--datastore", dstURL, "file://"+bundle)
	rows = append(rows, row("restore (etcd API)", "vcsnap", d, 0, rss))

	d, rss = run(t, nil, rig.Tool(t, "etcdutl"), "snapshot", "restore", db, "--data-dir", filepath.Join(dir, "restored"),
		"--bump-revision", "1000000", "--mark-compacted")
	rows = append(rows, row("restore (offline data dir)", "etcdutl snapshot restore", d, 0, rss))

	seq := rig.StartEtcd(t, rig.WithEtcdArgs("--quota-backend-bytes=8589934592"))
	d = putPerKey(t, cli, seq.Client(t))
	rows = append(rows, row("restore (etcd API)", "one Put per key, sequential (vcluster's method)", d, 0, 0))
	return rows
}

// putPerKey re-creates vcluster's restore: one write per key, one after another.
func putPerKey(t *testing.T, from, to *clientv3.Client) time.Duration {
	ctx := context.Background()
	resp, err := from.Get(ctx, "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, kv := range resp.Kvs {
		if _, err := to.Put(ctx, string(kv.Key), string(kv.Value)); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(start)
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
	fmt.Fprintf(&md, "| keys | operation | method | seconds | keys/s | MB/s (values) | output | peak RSS |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		out, rss := "", ""
		if r.OutBytes > 0 {
			out = fmt.Sprintf("%.1f MB", float64(r.OutBytes)/1e6)
		}
		if r.PeakRSSMiB > 0 {
			rss = fmt.Sprintf("%.0f MiB", r.PeakRSSMiB)
		}
		fmt.Fprintf(&md, "| %d | %s | %s | %.2f | %.0f | %.1f | %s | %s |\n", r.Keys, r.Operation, r.Method, r.Seconds, r.KeysPerSec, r.MBPerSec, out, rss)
	}
	dir := "results"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(rows, "", "  ")
	os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644)
	os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644)
	t.Logf("\n%s", md.String())
}
