package rig

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// VCSnapJobOptions describe a Job that runs vcsnap next to a virtual
// cluster's control plane, on its volume.
//
// This is the shape the by-name commands (`vcsnap snapshot create NAME -n NS`,
// `vcsnap restore NAME -n NS`) will create: they find the StatefulSet's pod,
// its PVC and its node, and run vcsnap's own image in a Job that mounts the
// PVC at /data, so the datastore is reached where it lives (kine's socket,
// the SQLite file, or the embedded etcd with the certificates on the volume).
type VCSnapJobOptions struct {
	Name      string   // Job name
	Namespace string   // the virtual cluster's host namespace
	PVC       string   // the control plane's volume (data-<vcluster>-0), mounted at MountPath
	MountPath string   // default /data
	ReadOnly  bool     // mount the volume read-only (a snapshot through kine's socket needs no writes)
	Args      []string // vcsnap's arguments (the image's entrypoint is /vcsnap)
	Image     string   // default VCSnapImageRef
	// EnvSecret names a Secret whose keys become environment variables
	// (object store credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
	EnvSecret string
	Env       []corev1.EnvVar
	// NodeName pins the pod to the control plane's node (the volume is
	// ReadWriteOnce; kine's socket is only reachable there).
	NodeName string
	// RunAsUser defaults to 0: vcluster's control plane runs as root, so
	// the datastore files and kine's socket (mode 0600) are root's. The
	// image's own default user is 65532.
	RunAsUser *int64
	Labels    map[string]string
	// ActiveDeadline bounds the Job (default 10 minutes).
	ActiveDeadline time.Duration
}

// VCSnapJob builds the Job (not created).
func VCSnapJob(o VCSnapJobOptions) *batchv1.Job {
	if o.MountPath == "" {
		o.MountPath = "/data"
	}
	if o.Image == "" {
		o.Image = VCSnapImageRef
	}
	if o.ActiveDeadline == 0 {
		o.ActiveDeadline = 10 * time.Minute
	}
	uid := int64(0)
	if o.RunAsUser != nil {
		uid = *o.RunAsUser
	}
	nonRoot := uid != 0
	backoff := int32(0)
	deadline := int64(o.ActiveDeadline / time.Second)
	no := false
	labels := map[string]string{"app.kubernetes.io/name": "vcsnap", "app.kubernetes.io/component": "job"}
	for k, v := range o.Labels {
		labels[k] = v
	}
	c := corev1.Container{
		Name:            "vcsnap",
		Image:           o.Image,
		ImagePullPolicy: corev1.PullNever,
		Args:            o.Args,
		Env:             o.Env,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			RunAsNonRoot:             &nonRoot,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   boolPtr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "data", MountPath: o.MountPath, ReadOnly: o.ReadOnly},
			{Name: "tmp", MountPath: "/tmp"},
		},
	}
	if o.EnvSecret != "" {
		c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: o.EnvSecret}}}}
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, Labels: labels},
		Spec: batchv1.JobSpec{
			BackoffLimit:          &backoff,
			ActiveDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					NodeName:                     o.NodeName,
					AutomountServiceAccountToken: &no,
					EnableServiceLinks:           &no,
					Containers:                   []corev1.Container{c},
					Volumes: []corev1.Volume{
						{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: o.PVC, ReadOnly: o.ReadOnly}}},
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
				},
			},
		},
	}
}

func boolPtr(b bool) *bool { return &b }

// JobResult is how a Job ended.
type JobResult struct {
	Succeeded bool
	Pod       string
	Logs      string // the pod's log, read through the apiserver from the kubelet
	Duration  time.Duration
}

// RunJob creates the Job, waits until it completes or fails, and returns its
// pod's logs. A Job that does not finish within timeout fails the test.
func RunJob(t testing.TB, cfg *rest.Config, job *batchv1.Job, timeout time.Duration) JobResult {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	start := time.Now()
	created, err := cs.BatchV1().Jobs(job.Namespace).Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Job %s/%s: %v", job.Namespace, job.Name, err)
	}
	var res JobResult
	WaitReady(t, timeout, fmt.Sprintf("Job %s/%s finished", job.Namespace, job.Name), func(ctx context.Context) error {
		j, err := cs.BatchV1().Jobs(job.Namespace).Get(ctx, job.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range j.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				continue
			}
			switch c.Type {
			case batchv1.JobComplete:
				res.Succeeded = true
				return nil
			case batchv1.JobFailed:
				return nil
			}
		}
		return fmt.Errorf("active %d, succeeded %d, failed %d", j.Status.Active, j.Status.Succeeded, j.Status.Failed)
	})
	res.Duration = time.Since(start)
	pods, err := cs.CoreV1().Pods(job.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/controller-uid=" + string(created.UID)})
	if err != nil {
		t.Fatalf("list the Job's pods: %v", err)
	}
	var logs []string
	for _, p := range pods.Items {
		res.Pod = p.Name
		b, err := cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "vcsnap"}).DoRaw(ctx)
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("logs of %s/%s: %v", p.Namespace, p.Name, err)
		}
		logs = append(logs, string(b))
	}
	res.Logs = strings.Join(logs, "\n")
	return res
}
