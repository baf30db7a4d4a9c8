package rig

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// VolumeSnapshotGVR and VolumeSnapshotContentGVR are the snapshot.storage.k8s.io/v1 resources.
var (
	VolumeSnapshotGVR        = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	VolumeSnapshotContentGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}
)

// WaitPVCBound waits until the PVC is Bound and returns it.
func WaitPVCBound(t testing.TB, cfg *rest.Config, namespace, name string, timeout time.Duration) *corev1.PersistentVolumeClaim {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	var pvc *corev1.PersistentVolumeClaim
	WaitReady(t, timeout, fmt.Sprintf("PVC %s/%s Bound", namespace, name), func(ctx context.Context) error {
		c, err := cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("phase %q", c.Status.Phase)
		}
		pvc = c
		return nil
	})
	return pvc
}

// WaitSnapshotReady waits until the VolumeSnapshot has status.readyToUse
// true and returns it with its bound VolumeSnapshotContent.
func WaitSnapshotReady(t testing.TB, cfg *rest.Config, namespace, name string, timeout time.Duration) (snap, content *unstructured.Unstructured) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cfg)
	WaitReady(t, timeout, fmt.Sprintf("VolumeSnapshot %s/%s readyToUse", namespace, name), func(ctx context.Context) error {
		s, err := dyn.Resource(VolumeSnapshotGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready, _, _ := unstructured.NestedBool(s.Object, "status", "readyToUse")
		if !ready {
			st, _, _ := unstructured.NestedMap(s.Object, "status")
			return fmt.Errorf("not ready: status %v", st)
		}
		cname, _, _ := unstructured.NestedString(s.Object, "status", "boundVolumeSnapshotContentName")
		c, err := dyn.Resource(VolumeSnapshotContentGVR).Get(ctx, cname, metav1.GetOptions{})
		if err != nil {
			return err
		}
		snap, content = s, c
		return nil
	})
	return snap, content
}
