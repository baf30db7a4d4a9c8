package vcluster

import (
	"github.com/vcsnap/vcsnap/internal/units"

	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// engineGrace is how long a stopped engine may take to undo its partial work.
const engineGrace = 10 * time.Minute

// SecretsMountPath is where the engine pod finds the files of its temporary Secret.
const SecretsMountPath = "/var/run/vcsnap/secrets"

// Labels on every object the engine runs with.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelComponent = "app.kubernetes.io/component"
	LabelVCluster  = "vcsnap.io/vcluster"
	LabelOperation = "vcsnap.io/operation"
)

// EngineLabels select the temporaries of one virtual cluster's engine runs.
func EngineLabels(vcName string) map[string]string {
	return map[string]string{LabelName: "vcsnap", LabelComponent: "engine", LabelVCluster: labelValue(vcName)}
}

// JobOptions describe one run of vcsnap's engine next to a virtual cluster.
type JobOptions struct {
	// Operation names the run ("snapshot", "restore").
	Operation string
	Image     string
	// PullPolicy defaults to IfNotPresent.
	PullPolicy corev1.PullPolicy
	// Args are vcsnap's arguments (the image's entrypoint is vcsnap).
	Args []string
	// Summary says what the run does, for Describe (the arguments may name only a
	// request file).
	Summary string
	// Env holds secret environment variables (store credentials, the database
	// password). They reach the pod through a temporary Secret, never arguments.
	Env map[string]string
	// Files go into the same Secret and appear at SecretsMountPath/<name>.
	Files map[string][]byte
	// ReadOnly mounts the data volume read-only.
	ReadOnly bool
	// Timeout bounds the run (the Job's activeDeadlineSeconds). Default 1 hour.
	Timeout time.Duration
}

// EngineJob is what RunJob creates: the Job and its temporary Secret (nil when there
// is nothing secret). Building it touches nothing, so dry runs print it.
type EngineJob struct {
	Job    *batchv1.Job
	Secret *corev1.Secret
	// Summary says what the run does (JobOptions.Summary).
	Summary string
	// OnLog, when set, receives the engine's log lines as it writes them (its
	// progress), while RunJob waits.
	OnLog func(line string)
}

// BuildJob builds the engine Job for vc: vcsnap's image in the virtual cluster's
// namespace, the data volume mounted at /data when the datastore lives on it (pinned
// to the control plane's node when the volume is ReadWriteOnce), running as root
// because vcluster's control plane owns its files as root, with every capability
// dropped and a read-only root filesystem.
func (vc *VCluster) BuildJob(o JobOptions) (*EngineJob, error) {
	if o.Image == "" {
		return nil, errors.New("the engine Job needs vcsnap's image (--image)")
	}
	if o.PullPolicy == "" {
		o.PullPolicy = corev1.PullIfNotPresent
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Hour
	}
	name := jobName(o.Operation, vc.Name)
	lbl := EngineLabels(vc.Name)
	lbl[LabelOperation] = labelValue(o.Operation)
	uid := int64(65532)
	if vc.Datastore.OnVolume {
		uid = 0
	}
	nonRoot, no, yes := uid != 0, false, true
	backoff := int32(0)
	deadline := int64(o.Timeout / time.Second)
	ttl := int32(3600) // an abandoned run (the CLI was killed) is removed after an hour
	c := corev1.Container{
		Name:            "vcsnap",
		Image:           o.Image,
		ImagePullPolicy: o.PullPolicy,
		Args:            o.Args,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: &uid, RunAsGroup: &uid, RunAsNonRoot: &nonRoot,
			AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}},
		// The engine's result: a channel of its own, which log lines cannot land in.
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}
	grace := int64(engineGrace / time.Second)
	spec := corev1.PodSpec{
		// A stopped restore puts the target's previous keys back before it exits: an API
		// target takes one write per key, more than the default 30 s.
		TerminationGracePeriodSeconds: &grace,
		RestartPolicy:                 corev1.RestartPolicyNever,
		AutomountServiceAccountToken:  &no,
		EnableServiceLinks:            &no,
		Volumes:                       []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
	}
	if nonRoot {
		// The Secret's files are mode 0400 and owned by root: a non-root engine reads
		// them through the pod's fsGroup (the kubelet gives the group read access).
		spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: &uid}
	}
	if t := vc.template; t != nil {
		spec.Tolerations, spec.NodeSelector, spec.ImagePullSecrets = t.Spec.Tolerations, t.Spec.NodeSelector, t.Spec.ImagePullSecrets
		// The engine dials what the control plane dials (a deployed etcd by its Service
		// name): it resolves names the way the control plane pod does.
		spec.HostAliases = t.Spec.HostAliases
	}
	if vc.Datastore.OnVolume {
		if vc.DataPVC == "" {
			return nil, fmt.Errorf("the datastore of %s/%s is on a data volume vcsnap did not find", vc.Namespace, vc.Name)
		}
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: vc.DataPVC, ReadOnly: o.ReadOnly}}})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: DataMountPath, ReadOnly: o.ReadOnly})
		if vc.DataPVCSingleNode && vc.Node != "" {
			spec.NodeName = vc.Node // ReadWriteOnce: only where the control plane has it mounted
		}
	}
	if vc.Datastore.CertsSecret != "" {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "etcd-certs", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: vc.Datastore.CertsSecret}}})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "etcd-certs", MountPath: CertsMountPath, ReadOnly: true})
	}
	ej := &EngineJob{Summary: o.Summary}
	if len(o.Env) > 0 || len(o.Files) > 0 {
		sname := name + "-env"
		sec := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: sname, Namespace: vc.Namespace, Labels: lbl},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{},
		}
		for _, k := range sortedKeys(o.Env) {
			sec.Data[k] = []byte(o.Env[k])
			c.Env = append(c.Env, corev1.EnvVar{Name: k, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: sname}, Key: k}}})
		}
		if len(o.Files) > 0 {
			var items []corev1.KeyToPath
			mode := int32(0o400)
			for _, k := range sortedKeys(o.Files) {
				if _, dup := o.Env[k]; dup {
					return nil, fmt.Errorf("engine Job: %q is both an environment variable and a file", k)
				}
				sec.Data[k] = o.Files[k]
				items = append(items, corev1.KeyToPath{Key: k, Path: k, Mode: &mode})
			}
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "secrets", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: sname, Items: items}}})
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "secrets", MountPath: SecretsMountPath, ReadOnly: true})
		}
		ej.Secret = sec
	}
	spec.Containers = []corev1.Container{c}
	ej.Job = &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: vc.Namespace, Labels: lbl},
		Spec: batchv1.JobSpec{
			BackoffLimit:            &backoff,
			ActiveDeadlineSeconds:   &deadline,
			TTLSecondsAfterFinished: &ttl,
			Template:                corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl}, Spec: spec},
		},
	}
	return ej, nil
}

// Describe says what the Job would do, for --dry-run (secret values are not shown).
func (ej *EngineJob) Describe() string {
	var b strings.Builder
	j := ej.Job
	ps := j.Spec.Template.Spec
	c := ps.Containers[0]
	if ej.Secret != nil {
		fmt.Fprintf(&b, "create Secret %s/%s (temporary) with keys %s (values not shown)\n", ej.Secret.Namespace, ej.Secret.Name, strings.Join(sortedKeys(ej.Secret.Data), ", "))
	}
	fmt.Fprintf(&b, "create Job %s/%s: image %s", j.Namespace, j.Name, c.Image)
	if ps.NodeName != "" {
		fmt.Fprintf(&b, ", on node %s", ps.NodeName)
	}
	for _, v := range ps.Volumes {
		if v.PersistentVolumeClaim != nil {
			mode := "read-write"
			if v.PersistentVolumeClaim.ReadOnly {
				mode = "read-only"
			}
			fmt.Fprintf(&b, ", mounting PVC %s at %s (%s)", v.PersistentVolumeClaim.ClaimName, DataMountPath, mode)
		}
	}
	fmt.Fprintf(&b, "\n  running: vcsnap %s\n", strings.Join(c.Args, " "))
	if ej.Summary != "" {
		fmt.Fprintf(&b, "  %s\n", ej.Summary)
	}
	fmt.Fprintf(&b, "wait for Job %s/%s, read its result, then delete it", j.Namespace, j.Name)
	if ej.Secret != nil {
		fmt.Fprintf(&b, " and Secret %s", ej.Secret.Name)
	}
	return b.String()
}

// JobResult is how an engine run ended.
type JobResult struct {
	Job       string `json:"job"`
	Pod       string `json:"pod,omitempty"`
	Node      string `json:"node,omitempty"`
	Succeeded bool   `json:"succeeded"`
	ExitCode  int32  `json:"exitCode"`
	// Lingering: the engine's pod was still there when RunJob gave up waiting for it
	// to go (it may still be writing): nothing may resume the control plane.
	Lingering bool `json:"lingering,omitempty"`
	// Message is the container's termination message: the engine's result.
	Message  string        `json:"-"`
	Logs     string        `json:"-"`
	Duration units.Seconds `json:"durationSeconds"`
}

// LogTail is the last n lines of the engine's log.
func (r *JobResult) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(r.Logs, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ErrJobFailed means the engine ran and failed; the error carries its log tail.
var ErrJobFailed = errors.New("vcsnap's engine Job failed")

// Pod waiting reasons that end the run: at once (they never resolve), or when they
// last a minute (a pull or a Secret may still come through).
var (
	fatalWaiting = map[string]bool{"ErrImageNeverPull": true, "InvalidImageName": true}
	stuckWaiting = map[string]bool{"ImagePullBackOff": true, "ErrImagePull": true,
		"CreateContainerConfigError": true, "CreateContainerError": true}
)

// RunJob creates the temporary Secret and the Job, waits until the Job finishes, reads
// the pod's log, and deletes both (also when ctx is cancelled, stopping the engine
// with SIGTERM so it undoes a partial restore, and waiting until its pod is gone). A
// failed run returns ErrJobFailed with the log tail, and the result.
func RunJob(ctx context.Context, cs kubernetes.Interface, ej *EngineJob) (*JobResult, error) {
	start := time.Now()
	ns := ej.Job.Namespace
	res := &JobResult{Job: ej.Job.Name}
	cleanup := func() {
		// Cleanup runs also after Ctrl-C, on its own deadline: as long as a stopped
		// engine may take to put the previous keys back.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineGrace+time.Minute)
		defer cancel()
		res.Lingering = !deleteJob(cctx, cs, ej)
	}
	if ej.Secret != nil {
		if _, err := cs.CoreV1().Secrets(ns).Create(ctx, ej.Secret, metav1.CreateOptions{}); err != nil {
			return res, fmt.Errorf("create the engine's temporary Secret %s/%s: %w", ns, ej.Secret.Name, err)
		}
	}
	created, err := cs.BatchV1().Jobs(ns).Create(ctx, ej.Job, metav1.CreateOptions{})
	if err != nil {
		cleanup()
		return res, fmt.Errorf("create the engine Job %s/%s: %w", ns, ej.Job.Name, err)
	}
	defer cleanup()
	if ej.Secret != nil {
		// Owned by the Job: garbage collection removes it even if this process dies.
		owner := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":"batch/v1","kind":"Job","name":%q,"uid":%q}]}}`, created.Name, created.UID)
		if _, err := cs.CoreV1().Secrets(ns).Patch(ctx, ej.Secret.Name, types.MergePatchType, []byte(owner), metav1.PatchOptions{}); err != nil {
			slog.Warn("could not make the Job own its temporary Secret; it is deleted at the end anyway", "secret", ej.Secret.Name, "error", err)
		}
	}
	slog.Info("started vcsnap's engine Job", "job", ns+"/"+created.Name, "image", ej.Job.Spec.Template.Spec.Containers[0].Image)
	sel := "batch.kubernetes.io/controller-uid=" + string(created.UID)
	follow := &logFollower{cs: cs, ns: ns, fn: ej.OnLog}
	defer follow.stop()
	var stuck string
	var stuckSince time.Time
	err = wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
		j, err := cs.BatchV1().Jobs(ns).Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil // transient: try again
		}
		for _, c := range j.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				continue
			}
			switch c.Type {
			case batchv1.JobComplete, batchv1.JobSuccessCriteriaMet:
				res.Succeeded = true
				return true, nil
			case batchv1.JobFailed, batchv1.JobFailureTarget:
				return true, nil
			}
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				follow.start(ctx, p.Name)
			}
			for _, st := range p.Status.ContainerStatuses {
				w := st.State.Waiting
				if w != nil && fatalWaiting[w.Reason] {
					return false, fmt.Errorf("the engine pod %s cannot start: %s: %s (check --image and --image-pull-policy)", p.Name, w.Reason, w.Message)
				}
				if w != nil && stuckWaiting[w.Reason] {
					if stuck != w.Reason {
						stuck, stuckSince = w.Reason, time.Now()
					}
					if time.Since(stuckSince) > time.Minute {
						return false, fmt.Errorf("the engine pod %s cannot start: %s: %s", p.Name, w.Reason, w.Message)
					}
					return false, nil
				}
			}
		}
		stuck = ""
		return false, nil
	})
	res.Duration = units.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("stopped while the engine Job %s/%s ran (it is being deleted): %w", ns, created.Name, ctx.Err())
		}
		return res, err
	}
	readPodLog(ctx, cs, ns, sel, res)
	for try := 0; res.Succeeded && res.Message == "" && try < 5 && ctx.Err() == nil; try++ {
		// The Job may report Complete before the pod's status carries its termination
		// message (or a List failed): the result is worth a few more looks.
		time.Sleep(pollInterval)
		readPodLog(ctx, cs, ns, sel, res)
	}
	if !res.Succeeded {
		return res, fmt.Errorf("%w (Job %s/%s, pod %s, exit code %d); its log ends with:\n%s", ErrJobFailed, ns, created.Name, res.Pod, res.ExitCode, res.LogTail(30))
	}
	return res, nil
}

func readPodLog(ctx context.Context, cs kubernetes.Interface, ns, sel string, res *JobResult) {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil || len(pods.Items) == 0 {
		res.Logs = fmt.Sprintf("(no log: the Job's pod was not found: %v)", err)
		return
	}
	p := pods.Items[len(pods.Items)-1]
	res.Pod, res.Node = p.Name, p.Spec.NodeName
	for _, st := range p.Status.ContainerStatuses {
		if t := st.State.Terminated; t != nil {
			res.ExitCode, res.Message = t.ExitCode, t.Message
		}
	}
	b, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: "vcsnap"}).DoRaw(ctx)
	if err != nil {
		res.Logs = fmt.Sprintf("(the log of pod %s could not be read: %v)", p.Name, err)
		return
	}
	res.Logs = string(b)
}

// deleteJob removes the Job, its pods and the Secret, and waits until the pods are gone
// (a restore must not resume the control plane while the engine still writes). It
// reports whether they are.
func deleteJob(ctx context.Context, cs kubernetes.Interface, ej *EngineJob) bool {
	ns := ej.Job.Namespace
	bg := metav1.DeletePropagationBackground
	if err := cs.BatchV1().Jobs(ns).Delete(ctx, ej.Job.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		slog.Warn("could not delete the engine Job", "job", ns+"/"+ej.Job.Name, "error", err)
	}
	sel := "job-name=" + ej.Job.Name
	if err := cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: sel}); err != nil && !apierrors.IsNotFound(err) {
		slog.Warn("could not delete the engine Job's pods", "job", ns+"/"+ej.Job.Name, "error", err)
	}
	if ej.Secret != nil {
		if err := cs.CoreV1().Secrets(ns).Delete(ctx, ej.Secret.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			slog.Warn("could not delete the engine's temporary Secret: delete it by hand", "secret", ns+"/"+ej.Secret.Name, "error", err)
		}
	}
	err := wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		slog.Warn("the engine Job's pod is still there", "job", ns+"/"+ej.Job.Name, "error", err)
		return false
	}
	return true
}

func jobName(op, vc string) string {
	var r [3]byte
	_, _ = rand.Read(r[:])
	suffix := hex.EncodeToString(r[:])
	base := "vcsnap-" + op + "-" + vc
	if max := 63 - 1 - len(suffix); len(base) > max {
		base = strings.TrimRight(base[:max], "-.")
	}
	return base + "-" + suffix
}

func labelValue(s string) string {
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-._")
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// FinishOrphans handles engine Jobs of vc that an interrupted vcsnap left behind (the
// CLI was killed while its Job ran): it waits until each has finished, so that nothing
// resumes the control plane while an engine still writes its datastore, reads how it
// ended, and deletes it with its pod and temporary Secret.
func FinishOrphans(ctx context.Context, cs kubernetes.Interface, vc *VCluster) ([]JobResult, error) {
	sel := EngineLabels(vc.Name)
	jobs, err := cs.BatchV1().Jobs(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labelsString(sel)})
	if err != nil {
		return nil, fmt.Errorf("list vcsnap's engine Jobs in %s: %w", vc.Namespace, err)
	}
	var out []JobResult
	for _, j := range jobs.Items {
		res := JobResult{Job: j.Name}
		start := time.Now()
		logged := false
		err := wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
			cur, err := cs.BatchV1().Jobs(vc.Namespace).Get(ctx, j.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			if err != nil {
				return false, nil
			}
			for _, c := range cur.Status.Conditions {
				if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
					res.Succeeded = c.Type == batchv1.JobComplete
					return true, nil
				}
			}
			if !logged {
				slog.Info("an engine Job of an interrupted vcsnap run is still running; waiting until it finishes", "job", vc.Namespace+"/"+j.Name)
				logged = true
			}
			return false, nil
		})
		if err != nil {
			return out, fmt.Errorf("wait for the engine Job %s/%s: %w", vc.Namespace, j.Name, err)
		}
		res.Duration = units.Since(start)
		readPodLog(ctx, cs, vc.Namespace, "job-name="+j.Name, &res)
		ej := &EngineJob{Job: &j}
		if _, err := cs.CoreV1().Secrets(vc.Namespace).Get(ctx, j.Name+"-env", metav1.GetOptions{}); err == nil {
			ej.Secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: j.Name + "-env", Namespace: vc.Namespace}}
		}
		deleteJob(ctx, cs, ej)
		out = append(out, res)
	}
	return out, nil
}

func labelsString(m map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// ActiveEngineJobs names the engine Jobs of vc that are still running (another vcsnap
// run, or one an interrupted run left).
func ActiveEngineJobs(ctx context.Context, cs kubernetes.Interface, vc *VCluster) ([]string, error) {
	jobs, err := cs.BatchV1().Jobs(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labelsString(EngineLabels(vc.Name))})
	if err != nil {
		return nil, fmt.Errorf("list vcsnap's engine Jobs in %s: %w", vc.Namespace, err)
	}
	var active []string
	for _, j := range jobs.Items {
		done := false
		for _, c := range j.Status.Conditions {
			if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
				done = true
			}
		}
		if !done {
			active = append(active, j.Name)
		}
	}
	return active, nil
}

// logFollower relays a running engine pod's log lines as they come; RunJob still reads
// the whole log once the pod has ended, for a failed run's tail.
type logFollower struct {
	cs      kubernetes.Interface
	ns      string
	fn      func(string)
	started bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func (f *logFollower) start(ctx context.Context, pod string) {
	if f.fn == nil || f.started {
		return
	}
	f.started = true
	ctx, f.cancel = context.WithCancel(ctx)
	f.done = make(chan struct{})
	go func() {
		defer close(f.done)
		rc, err := f.cs.CoreV1().Pods(f.ns).GetLogs(pod, &corev1.PodLogOptions{Container: "vcsnap", Follow: true}).Stream(ctx)
		if err != nil {
			return // the final read reports the log
		}
		defer rc.Close()
		sc := bufio.NewScanner(rc)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			f.fn(sc.Text())
		}
	}()
}

func (f *logFollower) stop() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
}
