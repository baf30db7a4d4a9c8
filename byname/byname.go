package byname

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/engine"
	"github.com/vcsnap/vcsnap/vcluster"
)

// Errors a caller tells apart (a CLI maps them to exit codes and flag hints).
var (
	// ErrOption: the options ask for something that cannot work (a missing file,
	// volumes of a point in time, a store the engine cannot reach).
	ErrOption = errors.New("invalid option")
	// ErrBusy: another vcsnap run on the virtual cluster is in progress.
	ErrBusy = errors.New("another vcsnap run is in progress")
)

// EngineError is a failed engine run: the engine's own exit code and message.
type EngineError struct {
	Job      string
	ExitCode int
	Message  string
	// LogTail is the end of the engine's log.
	LogTail string
}

func (e *EngineError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("exit code %d", e.ExitCode)
	}
	s := fmt.Sprintf("vcsnap's engine Job %s failed: %s", e.Job, msg)
	if e.LogTail != "" {
		s += "; its log ends with:\n" + e.LogTail
	}
	return s
}

func (e *EngineError) Unwrap() error { return vcluster.ErrJobFailed }

// unreadableResult is an engine Job that succeeded but whose result could not be read
// (its pod gone, its termination message cut).
type unreadableResult struct {
	job string
	err error
}

func (e *unreadableResult) Error() string {
	return fmt.Sprintf("the engine Job %s succeeded but its result is unreadable: %v", e.job, e.err)
}
func (e *unreadableResult) Unwrap() error { return e.err }

// Host is the host cluster the virtual clusters run on.
type Host struct {
	Config *rest.Config
	// Client, when nil, is made from Config.
	Client kubernetes.Interface
}

// needConfig refuses a Host without a rest.Config where one is needed (volume
// snapshots, helm).
func (h *Host) needConfig(what string) error {
	if h.Config == nil {
		return fmt.Errorf("%w: %s needs the host's rest.Config (Host.Config)", ErrOption, what)
	}
	return nil
}

func (h *Host) client() (kubernetes.Interface, error) {
	if h.Client != nil {
		return h.Client, nil
	}
	if h.Config == nil {
		return nil, fmt.Errorf("%w: no host cluster configuration", ErrOption)
	}
	cs, err := kubernetes.NewForConfig(h.Config)
	if err != nil {
		return nil, fmt.Errorf("host cluster client: %w", err)
	}
	h.Client = cs
	return cs, nil
}

// EngineOptions say how the engine Job runs.
type EngineOptions struct {
	// Image is vcsnap's image (required); PullPolicy defaults to IfNotPresent.
	Image      string
	PullPolicy corev1.PullPolicy
	// LogLevel is the engine's (default info).
	LogLevel string
	// Env is the store configuration the engine receives through its temporary Secret
	// (credentials never become arguments). Nil: StoreEnv().
	Env map[string]string
	// OnLog receives the engine's log lines as it writes them.
	OnLog func(line string)
}

// StoreEnv is this process's object store configuration that the engine needs.
func StoreEnv() map[string]string {
	env := map[string]string{}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"} {
		if v := os.Getenv(k); v != "" {
			env[k] = v
		}
	}
	return env
}

// CheckStore refuses a store the engine Job cannot reach as this process does (a CLI
// calls it before it connects to the host; Snapshot and Restore call it too).
func CheckStore(store string) error { return checkEngineStore(store) }

func checkEngineStore(store string) error {
	if strings.HasPrefix(store, "file://") {
		return fmt.Errorf("%w: %s is a path on this machine, but vcsnap's engine runs in a Job on the host cluster: use an s3:// store (or a datastore URL from inside the cluster)", ErrOption, store)
	}
	// The Job gets this process's AWS_* keys (StoreEnv), not its shared config files.
	if u, err := url.Parse(store); err == nil && u.Query().Has("profile") {
		return fmt.Errorf("%w: the store URL names an AWS profile, but vcsnap's engine runs in a Job on the host cluster without this machine's AWS config: drop profile= and export that profile's keys as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), which the Job receives", ErrOption)
	}
	return nil
}

// plan collects the actions of a run, in order: a dry run returns them, a real run logs
// each as it is taken.
type plan struct {
	dryRun  bool
	log     *slog.Logger
	actions []string
}

func (p *plan) step(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	p.actions = append(p.actions, s)
	if !p.dryRun {
		p.log.Info(s)
	}
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return l
}

// Describe is one line about a discovered virtual cluster.
func Describe(vc *vcluster.VCluster) string {
	s := fmt.Sprintf("found virtual cluster %s/%s: %s %s (replicas %d), datastore %s", vc.Namespace, vc.Name,
		vc.Workload.Kind, vc.Workload.Name, vc.Workload.Replicas, vc.Datastore.Kind)
	if vc.DataPVC != "" {
		s += ", data volume " + vc.DataPVC
	}
	if vc.Running {
		s += fmt.Sprintf(", pod %s on node %s", vc.Pod, vc.Node)
	} else {
		s += ", not running"
	}
	if vc.Workload.PausedReplicas != nil {
		s += fmt.Sprintf(", paused by vcsnap (was %d replicas)", *vc.Workload.PausedReplicas)
	}
	if vc.KubernetesVersion != "" {
		s += ", Kubernetes " + vc.KubernetesVersion
	}
	if vc.VClusterVersion != "" {
		s += ", vcluster " + vc.VClusterVersion
	}
	return s
}

// run is what every by-name operation starts with: the host's client, the virtual
// cluster found, and the plan.
type run struct {
	cs  kubernetes.Interface
	cfg *rest.Config
	vc  *vcluster.VCluster
	p   *plan
	log *slog.Logger
}

func start(ctx context.Context, h *Host, namespace, name, store string, dryRun bool, l *slog.Logger) (*run, error) {
	if err := checkEngineStore(store); err != nil {
		return nil, err
	}
	cs, err := h.client()
	if err != nil {
		return nil, err
	}
	vc, err := vcluster.Discover(ctx, cs, namespace, name)
	if err != nil {
		return nil, err
	}
	r := &run{cs: cs, cfg: h.Config, vc: vc, log: logger(l)}
	r.p = &plan{dryRun: dryRun, log: r.log}
	r.p.step("%s", Describe(vc))
	return r, nil
}

// engineFiles are the files the engine reads beside its request (key files), under
// the paths it finds them at.
type engineFiles map[string][]byte

func (ef engineFiles) add(name, path, what string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrOption, what, err)
	}
	ef[name] = b
	return vcluster.SecretsMountPath + "/" + name, nil
}

const requestFile = "request.json"

// buildEngine builds the engine Job for req: the request and files in its temporary
// Secret, with the store's environment and the datastore password.
func (r *run) buildEngine(ctx context.Context, eo EngineOptions, req *engine.Request, files engineFiles, password string, readOnly bool) (*vcluster.EngineJob, error) {
	req.Version = engine.Version
	if req.LogLevel = eo.LogLevel; req.LogLevel == "" {
		req.LogLevel = "info"
	}
	js, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	files[requestFile] = js
	summary, err := summarize(req)
	if err != nil {
		return nil, err
	}
	env := eo.Env
	if env == nil {
		env = StoreEnv()
	}
	if password != "" {
		env = cloneMap(env)
		env[open.PasswordEnv] = password
	}
	op := "snapshot"
	if req.Restore != nil {
		op = "restore"
	}
	timeout := time.Hour
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if eo.Image == "" {
		return nil, fmt.Errorf("%w: the engine Job needs vcsnap's image", ErrOption)
	}
	return r.vc.BuildJob(vcluster.JobOptions{Operation: op, Image: eo.Image, PullPolicy: eo.PullPolicy,
		Args: []string{"engine", "--request", vcluster.SecretsMountPath + "/" + requestFile}, Summary: "request: " + summary,
		Env: env, Files: files, ReadOnly: readOnly, Timeout: timeout})
}

// runEngine runs the Job, relays its log, and returns its result.
func (r *run) runEngine(ctx context.Context, eo EngineOptions, ej *vcluster.EngineJob) (*engine.Result, *vcluster.JobResult, error) {
	relayed := 0
	ej.OnLog = func(line string) {
		relayed++
		if eo.OnLog != nil {
			eo.OnLog(line)
		}
	}
	jr, err := vcluster.RunJob(ctx, r.cs, ej)
	if relayed == 0 && jr != nil && jr.Logs != "" {
		// The pod ended before its log could be followed: relay it now.
		for _, l := range strings.Split(strings.TrimRight(jr.Logs, "\n"), "\n") {
			ej.OnLog(l)
		}
	}
	if err != nil && !errors.Is(err, vcluster.ErrJobFailed) {
		return nil, jr, err
	}
	res, derr := engine.DecodeResult(jr.Message)
	switch {
	case err != nil && derr == nil && res.ExitCode > 0:
		return res, jr, &EngineError{Job: jr.Job, ExitCode: res.ExitCode, Message: res.Error}
	case err != nil:
		// Killed, past its deadline, or its pod gone before it terminated: no code of its own.
		return nil, jr, &EngineError{Job: jr.Job, ExitCode: max(int(jr.ExitCode), 1), LogTail: jr.LogTail(30)}
	case derr != nil:
		// The Job succeeded: its work is done even though its result cannot be read, and
		// the caller must not undo it (delete the volume snapshots a bundle refers to).
		return nil, jr, &unreadableResult{job: jr.Job, err: derr}
	}
	r.log.Info("the engine Job finished", "job", jr.Job, "node", jr.Node, "took", jr.Duration.Round(time.Millisecond))
	return res, jr, nil
}

// summarize is the request as a dry run shows it: the vcluster values (they may hold a
// database password) and the identity (private keys) left out.
func summarize(req *engine.Request) (string, error) {
	c := *req
	if s := c.Snapshot; s != nil {
		cp := *s
		if s.ValuesYAML != "" {
			cp.ValuesYAML = fmt.Sprintf("(%d bytes, not shown)", len(s.ValuesYAML))
		}
		if s.Identity != "" {
			cp.Identity = fmt.Sprintf("(%d bytes, not shown)", len(s.Identity))
		}
		c.Snapshot = &cp
	}
	b, err := json.Marshal(c)
	return string(b), err
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}
