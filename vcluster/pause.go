package vcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// pollInterval is how often Pause, Resume and the engine Job poll the host API.
const pollInterval = time.Second

// ResumeCommand is the command that brings a paused virtual cluster back.
func ResumeCommand(namespace, name string) string {
	return fmt.Sprintf("vcsnap resume %s -n %s", name, namespace)
}

// Pause scales the control plane to zero and waits until its pods are gone: nothing
// writes the datastore afterwards. The replicas it had are recorded in the annotation
// PausedReplicasAnnotation in the same update, so a run interrupted at any point can be
// undone with ResumeCommand. Pausing a workload vcsnap already paused keeps the first
// recorded replicas. It returns the replicas Resume will restore.
func Pause(ctx context.Context, cs kubernetes.Interface, vc *VCluster) (int32, error) {
	prior := vc.Workload.Replicas
	if vc.Workload.PausedReplicas != nil {
		prior = *vc.Workload.PausedReplicas // paused by an earlier, interrupted run
	}
	patch := map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{PausedReplicasAnnotation: strconv.Itoa(int(prior))}},
		"spec":     map[string]any{"replicas": 0},
	}
	if err := patchWorkload(ctx, cs, vc, patch); err != nil {
		return 0, fmt.Errorf("pause %s %s/%s (scale to 0): %w", vc.Workload.Kind, vc.Namespace, vc.Workload.Name, err)
	}
	vc.Workload.PausedReplicas = &prior
	vc.Workload.Replicas = 0
	slog.Info("pausing the virtual cluster: scaled to 0, waiting until its pods are gone",
		"workload", vc.Workload.Kind+"/"+vc.Workload.Name, "namespace", vc.Namespace, "replicas", prior, "resume", ResumeCommand(vc.Namespace, vc.Name))
	var left []string
	err := wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
		pods, err := listPods(ctx, cs, vc)
		if err != nil {
			return false, err
		}
		left = left[:0]
		for _, p := range pods {
			left = append(left, p.Name)
		}
		return len(left) == 0, nil
	})
	if err != nil {
		return prior, fmt.Errorf("the control plane's pods %v did not go away: %w; bring it back with: %s", left, err, ResumeCommand(vc.Namespace, vc.Name))
	}
	vc.Running, vc.Pod, vc.PodIP = false, "", ""
	return prior, nil
}

// Resume scales the control plane back to the replicas Pause recorded, removes the
// annotation, and waits until that many pods are Ready. A workload that is not paused
// by vcsnap is left alone.
func Resume(ctx context.Context, cs kubernetes.Interface, vc *VCluster) error {
	if vc.Workload.PausedReplicas == nil {
		slog.Info("the virtual cluster is not paused by vcsnap; nothing to resume", "workload", vc.Workload.Kind+"/"+vc.Workload.Name, "namespace", vc.Namespace)
		return WaitReady(ctx, cs, vc, vc.Workload.Replicas)
	}
	replicas := *vc.Workload.PausedReplicas
	patch := map[string]any{
		"metadata": map[string]any{"annotations": map[string]any{PausedReplicasAnnotation: nil}},
		"spec":     map[string]any{"replicas": replicas},
	}
	if err := patchWorkload(ctx, cs, vc, patch); err != nil {
		return fmt.Errorf("resume %s %s/%s (scale to %d): %w; retry with: %s", vc.Workload.Kind, vc.Namespace, vc.Workload.Name, replicas, err, ResumeCommand(vc.Namespace, vc.Name))
	}
	vc.Workload.PausedReplicas = nil
	vc.Workload.Replicas = replicas
	slog.Info("resuming the virtual cluster", "workload", vc.Workload.Kind+"/"+vc.Workload.Name, "namespace", vc.Namespace, "replicas", replicas)
	return WaitReady(ctx, cs, vc, replicas)
}

// WaitReady waits until replicas control plane pods are Ready.
func WaitReady(ctx context.Context, cs kubernetes.Interface, vc *VCluster, replicas int32) error {
	var state string
	err := wait.PollUntilContextCancel(ctx, pollInterval, true, func(ctx context.Context) (bool, error) {
		pods, err := listPods(ctx, cs, vc)
		if err != nil {
			return false, err
		}
		var ready int32
		var st []string
		for _, p := range pods {
			if p.DeletionTimestamp == nil && podReady(&p) {
				ready++
			}
			st = append(st, podState(&p))
		}
		state = strings.Join(st, "; ")
		return ready == replicas && int32(len(pods)) == replicas, nil
	})
	if err != nil {
		return fmt.Errorf("the virtual cluster %s/%s did not become ready (%d replicas; pods: %s): %w", vc.Namespace, vc.Name, replicas, state, err)
	}
	if replicas > 0 {
		if p, err := runningPod(ctx, cs, vc); err == nil && p != nil {
			vc.Running, vc.Pod, vc.Node, vc.PodIP = true, p.Name, p.Spec.NodeName, p.Status.PodIP
		}
	}
	return nil
}

func podState(p *corev1.Pod) string {
	s := fmt.Sprintf("%s %s ready=%t", p.Name, p.Status.Phase, podReady(p))
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Waiting != nil && c.State.Waiting.Reason != "" {
			s += " " + c.Name + ":" + c.State.Waiting.Reason
		}
		if c.RestartCount > 0 {
			s += fmt.Sprintf(" %s restarts=%d", c.Name, c.RestartCount)
		}
	}
	return s
}

func listPods(ctx context.Context, cs kubernetes.Interface, vc *VCluster) ([]corev1.Pod, error) {
	pods, err := cs.CoreV1().Pods(vc.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set(vc.Workload.Selector).String()})
	if err != nil {
		return nil, fmt.Errorf("list the control plane's pods in %s: %w", vc.Namespace, err)
	}
	return pods.Items, nil
}

func patchWorkload(ctx context.Context, cs kubernetes.Interface, vc *VCluster, patch map[string]any) error {
	b, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	switch vc.Workload.Kind {
	case "StatefulSet":
		_, err = cs.AppsV1().StatefulSets(vc.Namespace).Patch(ctx, vc.Workload.Name, types.MergePatchType, b, metav1.PatchOptions{})
	case "Deployment":
		_, err = cs.AppsV1().Deployments(vc.Namespace).Patch(ctx, vc.Workload.Name, types.MergePatchType, b, metav1.PatchOptions{})
	default:
		err = fmt.Errorf("unknown workload kind %q", vc.Workload.Kind)
	}
	return err
}
