package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/test/rig"
)

// ---- the vcsnap binary ----

// vcsnapCLI runs the vcsnap binary built by TestMain with a fixed environment.
type vcsnapCLI struct {
	env []string // added to a minimal environment
}

// runResult is one finished vcsnap run.
type runResult struct {
	Args   []string
	Stdout string
	Stderr string
	Code   int
	Took   time.Duration
}

func (r runResult) String() string {
	return fmt.Sprintf("vcsnap %s: exit %d after %v\nstdout:\n%s\nstderr:\n%s",
		strings.Join(r.Args, " "), r.Code, r.Took.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// newCLI returns a runner whose environment carries the S3 credentials of m
// (never arguments: vcsnap takes credentials only from the environment) and
// nothing of the test machine's AWS configuration.
func newCLI(t *testing.T, m *rig.MinIO) *vcsnapCLI {
	t.Helper()
	if vcsnapBin == "" {
		t.Fatal("vcsnap binary not built (TestMain skipped the build under -short)")
	}
	home := t.TempDir()
	c := &vcsnapCLI{env: []string{
		"HOME=" + home,
		"PATH=/usr/bin:/bin",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "aws-config-none"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "aws-credentials-none"),
		"AWS_EC2_METADATA_DISABLED=true",
	}}
	if m != nil {
		c.env = append(c.env, "AWS_ACCESS_KEY_ID="+m.AccessKey, "AWS_SECRET_ACCESS_KEY="+m.SecretKey)
	}
	return c
}

// run runs vcsnap with args (plain log lines, no progress display: stderr is not a terminal).
func (c *vcsnapCLI) run(t *testing.T, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vcsnapBin, args...)
	cmd.Env = c.env
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	res := runResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("run vcsnap %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("vcsnap timed out: %s", res)
	}
	t.Logf("vcsnap %s: exit %d in %v", redactArgs(args), res.Code, res.Took.Round(time.Millisecond))
	return res
}

// mustJSON runs vcsnap with -o json, fails the test on a non-zero exit, and decodes stdout into v.
func (c *vcsnapCLI) mustJSON(t *testing.T, v any, args ...string) runResult {
	t.Helper()
	res := c.run(t, append([]string{"-o", "json"}, args...)...)
	if res.Code != 0 {
		t.Fatalf("%s", res)
	}
	if err := json.Unmarshal([]byte(res.Stdout), v); err != nil {
		t.Fatalf("decode JSON output: %v\n%s", err, res)
	}
	return res
}

// redactArgs shortens store URLs' query strings in logs (they carry no
// credentials, only endpoint options, but are long).
func redactArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if q := strings.IndexByte(a, '?'); q > 0 && strings.Contains(a[:q], "://") {
			a = a[:q] + "?…"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// ---- S3 (MinIO) ----

// s3Bucket is a bucket on a MinIO server, addressed with vcsnap store URLs.
type s3Bucket struct {
	minio  *rig.MinIO
	bucket string
}

func newBucket(t *testing.T, m *rig.MinIO, name string) s3Bucket {
	t.Helper()
	m.CreateBucket(t, name)
	return s3Bucket{minio: m, bucket: name}
}

// url is the vcsnap store URL of key: endpoint, path style and region as options.
func (b s3Bucket) url(key string) string {
	q := url.Values{}
	q.Set("endpoint", b.minio.Endpoint)
	q.Set("force-path-style", "true")
	q.Set("region", b.minio.Region)
	return "s3://" + b.bucket + "/" + key + "?" + q.Encode()
}

// ---- datastores ----

// datastoreURL is the vcsnap --datastore URL of a rig datastore. Every kind
// goes through its etcd v3 API: etcd itself (etcd://, or etcds:// with the
// rig's client certificate), and kine's etcd endpoint for the SQL kinds.
func datastoreURL(t *testing.T, ds *rig.Datastore) string {
	t.Helper()
	u, err := url.Parse(ds.EtcdEndpoint)
	if err != nil {
		t.Fatalf("datastore endpoint %q: %v", ds.EtcdEndpoint, err)
	}
	switch u.Scheme {
	case "http":
		return "etcd://" + u.Host
	case "https":
		if ds.Etcd == nil || !ds.Etcd.TLS {
			t.Fatalf("https endpoint %s without rig TLS files", ds.EtcdEndpoint)
		}
		q := url.Values{}
		q.Set("cacert", ds.Etcd.CAFile)
		q.Set("cert", ds.Etcd.CertFile)
		q.Set("key", ds.Etcd.KeyFile)
		return "etcds://" + u.Host + "?" + q.Encode()
	}
	t.Fatalf("datastore endpoint %q: unknown scheme", ds.EtcdEndpoint)
	return ""
}

// ---- timing ----

// stopwatch logs how long each phase of a test took.
type stopwatch struct {
	t      *testing.T
	start  time.Time
	last   time.Time
	phases []string
}

func newStopwatch(t *testing.T) *stopwatch {
	now := time.Now()
	return &stopwatch{t: t, start: now, last: now}
}

// lap ends a phase and logs its duration.
func (s *stopwatch) lap(phase string) time.Duration {
	now := time.Now()
	d := now.Sub(s.last)
	s.last = now
	s.phases = append(s.phases, fmt.Sprintf("%s %.1fs", phase, d.Seconds()))
	s.t.Logf("phase %-28s %6.2fs", phase, d.Seconds())
	return d
}

func (s *stopwatch) total() time.Duration { return time.Since(s.start) }

// summary is one line: total and every phase.
func (s *stopwatch) summary() string {
	return fmt.Sprintf("%.1fs (%s)", s.total().Seconds(), strings.Join(s.phases, ", "))
}

// ---- watches ----

// rvInt parses a resourceVersion (the datastore revision on etcd and kine).
func rvInt(t *testing.T, rv string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q is not a number: %v", rv, err)
	}
	return n
}

// configMapWatcher follows a watch on ConfigMaps in all namespaces, as an
// informer does, remembering the newest resourceVersion it saw.
type configMapWatcher struct {
	w      watch.Interface
	done   chan struct{}
	mu     sync.Mutex
	lastRV string
	seen   map[string]string // namespace/name -> resourceVersion of its latest event
	errs   []string
}

func startConfigMapWatch(t *testing.T, cs kubernetes.Interface, rv string) *configMapWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := cs.CoreV1().ConfigMaps("").Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
	if err != nil {
		t.Fatalf("watch configmaps from resourceVersion %s: %v", rv, err)
	}
	cw := &configMapWatcher{w: w, done: make(chan struct{}), lastRV: rv, seen: map[string]string{}}
	t.Cleanup(w.Stop)
	go func() {
		defer close(cw.done)
		for ev := range w.ResultChan() {
			cw.mu.Lock()
			if ev.Type == watch.Error {
				cw.errs = append(cw.errs, apierrors.FromObject(ev.Object).Error())
			} else if m, err := metaAccessor(ev.Object); err == nil {
				cw.lastRV = m.GetResourceVersion()
				if ev.Type != watch.Bookmark {
					cw.seen[m.GetNamespace()+"/"+m.GetName()] = m.GetResourceVersion()
				}
			}
			cw.mu.Unlock()
		}
	}()
	return cw
}

// waitSeen waits until the watch delivered an event for namespace/name and returns its resourceVersion.
func (cw *configMapWatcher) waitSeen(t *testing.T, key string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		cw.mu.Lock()
		rv, ok := cw.seen[key]
		cw.mu.Unlock()
		if ok {
			return rv
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("watch did not deliver %s within %v", key, timeout)
	return ""
}

// last is the newest resourceVersion the watch delivered (events and bookmarks).
func (cw *configMapWatcher) last() string {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return cw.lastRV
}

// expectExpired starts a watch on ConfigMaps in all namespaces from rv and
// requires "resource version too old": HTTP 410 with reason Expired (or
// Gone), either as the watch request's error or as its first event. Any other
// event, and silence for the whole timeout, fail the test: a watcher that
// silently misses the restore is the bug this guards against.
func expectExpired(t *testing.T, cs kubernetes.Interface, rv string, timeout time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w, err := cs.CoreV1().ConfigMaps("").Watch(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
	if err != nil {
		if isTooOld(err) {
			return err.Error()
		}
		t.Fatalf("watch from resourceVersion %s: %v; want 410 Expired", rv, err)
	}
	defer w.Stop()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch from resourceVersion %s ended without an error; want 410 Expired", rv)
			}
			if ev.Type == watch.Error {
				err := apierrors.FromObject(ev.Object)
				if isTooOld(err) {
					return err.Error()
				}
				t.Fatalf("watch from resourceVersion %s: error event %v; want 410 Expired", rv, err)
			}
			m, _ := metaAccessor(ev.Object)
			name := "?"
			if m != nil {
				name = m.GetNamespace() + "/" + m.GetName() + "@" + m.GetResourceVersion()
			}
			t.Fatalf("watch from pre-restore resourceVersion %s delivered %s %s instead of 410 Expired", rv, ev.Type, name)
		case <-ctx.Done():
			t.Fatalf("watch from pre-restore resourceVersion %s stayed silent for %v; want 410 Expired", rv, timeout)
		}
	}
}

func isTooOld(err error) bool {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return false
	}
	return se.Status().Code == 410 && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err))
}

func metaAccessor(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// ---- results across subtests ----

// timings collects one line per subtest for a summary at the end of a test.
type timings struct {
	mu    sync.Mutex
	lines []string
}

func (tm *timings) add(format string, args ...any) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.lines = append(tm.lines, fmt.Sprintf(format, args...))
}

func (tm *timings) log(t *testing.T) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	t.Logf("timings:\n  %s", strings.Join(tm.lines, "\n  "))
}

// envOr returns the environment variable or def.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// nodeRig is a host cluster with the real node, and MinIO reachable from its pods.
type nodeRig struct {
	host         *rig.Host
	node         *rig.Node
	minio        *rig.MinIO
	bucket       s3Bucket
	minioForPods string // host:port at the root end of the node's veth
	cli          *vcsnapCLI
}

// startNodeRig starts the host, the node with the images (default: vcsnap and the
// stand-in vcluster), and MinIO exposed to pods, timing each step on sw.
func startNodeRig(t *testing.T, sw *stopwatch, bucket string, images ...string) *nodeRig {
	t.Helper()
	if len(images) == 0 {
		images = []string{rig.ImageVCSnap, rig.ImageVCluster}
	}
	r := &nodeRig{host: rig.StartHost(t, rig.HostOptions{})}
	sw.lap("start host")
	r.node = rig.StartNode(t, r.host, rig.NodeOptions{Images: images})
	sw.lap("start node (images, Ready)")
	r.minio = rig.StartMinIO(t)
	r.bucket = newBucket(t, r.minio, bucket)
	mu, err := url.Parse(r.minio.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	r.minioForPods = r.node.Expose(t, mu.Host)
	r.cli = newCLI(t, r.minio)
	sw.lap("start MinIO")
	return r
}

// podStoreURL is the store URL of key with MinIO at the node's veth address, where the
// test's CLI and the engine Job's pod both reach it.
func (r *nodeRig) podStoreURL(key string) string {
	q := url.Values{}
	q.Set("endpoint", "http://"+r.minioForPods)
	q.Set("force-path-style", "true")
	q.Set("region", r.minio.Region)
	return "s3://" + r.bucket.bucket + "/" + key + "?" + q.Encode()
}
