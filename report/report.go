// Package report makes the outcome of a run visible where operators look: a one-line JSON
// summary in the log, a Kubernetes Event on the Job, a status ConfigMap, and Prometheus
// metrics pushed to a Pushgateway. Reporting never changes a run's outcome.
package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Summary is one run's outcome. It holds nothing secret: URLs carry no credentials.
type Summary struct {
	Time            time.Time `json:"time"`
	Operation       string    `json:"operation"`
	Outcome         string    `json:"outcome"` // "success" or "failure"
	VirtualCluster  string    `json:"virtualCluster,omitempty"`
	Bundle          string    `json:"bundle,omitempty"`
	Keys            int64     `json:"keys"`
	Bytes           int64     `json:"bytes"`
	Revision        int64     `json:"revision,omitempty"`
	DurationSeconds float64   `json:"durationSeconds"`
	Error           string    `json:"error,omitempty"`
}

// Success reports whether the run succeeded.
func (s *Summary) Success() bool { return s.Outcome == "success" }

// WriteLine prints the summary as one JSON line.
func (s *Summary) WriteLine(w io.Writer) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// Target says where the in-cluster reports go. Namespace, Job name and UID come from the
// environment the chart sets with the downward API (POD_NAMESPACE, JOB_NAME, JOB_UID).
type Target struct {
	Client    kubernetes.Interface
	Namespace string
	JobName   string
	JobUID    string
	PodName   string
}

// InCluster builds a Target from the pod's service account and environment.
func InCluster() (*Target, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes access for reports: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	t := &Target{Client: cs, Namespace: os.Getenv("POD_NAMESPACE"), JobName: os.Getenv("JOB_NAME"),
		JobUID: os.Getenv("JOB_UID"), PodName: os.Getenv("POD_NAME")}
	if t.Namespace == "" {
		return nil, errors.New("POD_NAMESPACE is not set: the chart sets it from the downward API")
	}
	return t, nil
}

func (s *Summary) message() string {
	if !s.Success() {
		return fmt.Sprintf("%s of %s failed after %.1fs: %s", s.Operation, s.Bundle, s.DurationSeconds, s.Error)
	}
	return fmt.Sprintf("%s %s: %d keys, %d bytes stored, revision %d, %.1fs", s.Operation, s.Bundle, s.Keys, s.Bytes, s.Revision, s.DurationSeconds)
}

// Event records the outcome as an Event on the Job (or the Pod when not run by a Job).
func (t *Target) Event(ctx context.Context, s *Summary) error {
	ref := corev1.ObjectReference{Kind: "Job", APIVersion: "batch/v1", Namespace: t.Namespace, Name: t.JobName, UID: types.UID(t.JobUID)}
	if t.JobName == "" {
		ref = corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: t.Namespace, Name: t.PodName}
	}
	reason, typ := "SnapshotSucceeded", corev1.EventTypeNormal
	if !s.Success() {
		reason, typ = "SnapshotFailed", corev1.EventTypeWarning
	}
	now := metav1.NewTime(s.Time)
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "vcsnap-", Namespace: t.Namespace},
		InvolvedObject: ref, Reason: reason, Type: typ, Message: s.message(),
		Source:         corev1.EventSource{Component: "vcsnap"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}
	_, err := t.Client.CoreV1().Events(t.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}

// ConfigMap writes the outcome into a status ConfigMap, keeping the last success when a
// run fails.
func (t *Target) ConfigMap(ctx context.Context, name string, s *Summary) error {
	cms := t.Client.CoreV1().ConfigMaps(t.Namespace)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	create := apierrors.IsNotFound(err)
	if err != nil && !create {
		return err
	}
	if create {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: t.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "vcsnap"}}}
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	js, _ := json.Marshal(s)
	cm.Data["lastRun"] = string(js)
	cm.Data["lastOutcome"] = s.Outcome
	cm.Data["lastRunTime"] = s.Time.UTC().Format(time.RFC3339)
	if s.Success() {
		cm.Data["lastSuccess"] = string(js)
		cm.Data["lastSuccessTime"] = s.Time.UTC().Format(time.RFC3339)
	}
	if create {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	return err
}

// Push sends metrics to a Prometheus Pushgateway under job "vcsnap" and the virtual
// cluster's name. POST replaces only the metrics it sends, so the last success time
// survives a failed run.
func Push(ctx context.Context, gateway string, s *Summary) error {
	var b bytes.Buffer
	gauge := func(name, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", name, help, name, name, strconv.FormatFloat(v, 'g', -1, 64))
	}
	failed := 0.0
	if !s.Success() {
		failed = 1
	}
	gauge("vcsnap_last_run_failed", "1 if the last run failed.", failed)
	gauge("vcsnap_last_run_timestamp_seconds", "When the last run ended.", float64(s.Time.Unix()))
	gauge("vcsnap_last_run_duration_seconds", "How long the last run took.", s.DurationSeconds)
	if s.Success() {
		gauge("vcsnap_last_success_timestamp_seconds", "When the last successful run ended.", float64(s.Time.Unix()))
		gauge("vcsnap_last_success_bytes", "Bytes stored by the last successful run.", float64(s.Bytes))
		gauge("vcsnap_last_success_keys", "Keys captured by the last successful run.", float64(s.Keys))
	} else {
		gauge("vcsnap_last_failure_timestamp_seconds", "When the last failed run ended.", float64(s.Time.Unix()))
	}
	vc := s.VirtualCluster
	if vc == "" {
		vc = "default"
	}
	u := gateway + "/metrics/job/vcsnap/vcluster/" + url.PathEscape(vc)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, &b)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("push metrics to %s: %w", gateway, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("push metrics to %s: %s: %s", gateway, resp.Status, body)
	}
	return nil
}
