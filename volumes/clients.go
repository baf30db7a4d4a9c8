// Package volumes takes CSI volume snapshots of a virtual cluster's host PVCs and
// restores them, on the same host or another one.
//
// Snapshot finds the PVCs vcluster's syncer created in the host namespace, takes one
// VolumeSnapshot of each, waits until they are ready, sets their contents'
// deletionPolicy to Retain and removes the temporary Kubernetes objects again: what
// remains is the snapshot on the storage system, named by its handle in the
// returned bundle.Volume records. Restore turns those records back into PVCs:
// a pre-provisioned VolumeSnapshotContent with the handle, a VolumeSnapshot bound
// to it and a PVC with that snapshot as its dataSource, named the way the syncer
// expects, so the virtual cluster finds its volumes again.
package volumes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v6/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Clients are the host cluster's API clients.
type Clients struct {
	Kube      kubernetes.Interface
	Snapshots snapclient.Interface
}

// NewClients makes Clients for a host cluster.
func NewClients(cfg *rest.Config) (Clients, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return Clients{}, fmt.Errorf("kubernetes client: %w", err)
	}
	snaps, err := snapclient.NewForConfig(cfg)
	if err != nil {
		return Clients{}, fmt.Errorf("snapshot client: %w", err)
	}
	return Clients{Kube: kube, Snapshots: snaps}, nil
}

// ErrPVCExists is returned by Restore when a PVC of the name it would create is
// already there and RestoreOptions.Force is not set.
var ErrPVCExists = errors.New("a PVC of that name already exists")

// DefaultTimeout bounds waiting for snapshots to become ready and PVCs to bind
// when the options leave it zero.
const DefaultTimeout = 10 * time.Minute

// cleanupLimit bounds removing temporary objects, also after the main wait ran
// out of time: as long as the wait, at least 30 s (deletion needs the
// controllers' round trips), at most 2 minutes, so a configured timeout is not
// silently tripled.
func cleanupLimit(timeout time.Duration) time.Duration {
	return min(max(timeout, 30*time.Second), 2*time.Minute)
}

func printer(dry bool, print func(string)) func(format string, args ...any) {
	if !dry {
		return func(string, ...any) {}
	}
	if print == nil {
		print = func(s string) { fmt.Fprintln(os.Stdout, "[dry-run] "+s) }
	}
	return func(format string, args ...any) { print(fmt.Sprintf(format, args...)) }
}

// listWatch builds a ListerWatcher from list and watch functions of a typed client.
func listWatch[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error), watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error), selector string) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return watchFn(ctx, o)
		},
	}
}

// waitSet watches the objects lw lists until done holds for the current set of
// them (keyed namespace/name). It returns ctx's error when ctx ends first.
func waitSet(ctx context.Context, lw cache.ListerWatcher, objType runtime.Object, done func(map[string]runtime.Object) (bool, error)) error {
	state := map[string]runtime.Object{}
	key := func(o runtime.Object) string {
		m, err := meta.Accessor(o)
		if err != nil {
			return ""
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	pre := func(store cache.Store) (bool, error) {
		for _, o := range store.List() {
			if ro, ok := o.(runtime.Object); ok {
				state[key(ro)] = ro
			}
		}
		return done(state)
	}
	cond := func(ev watch.Event) (bool, error) {
		switch ev.Type {
		case watch.Added, watch.Modified:
			state[key(ev.Object)] = ev.Object
		case watch.Deleted:
			delete(state, key(ev.Object))
		case watch.Error:
			return false, apierrors.FromObject(ev.Object)
		}
		return done(state)
	}
	_, err := watchtools.UntilWithSync(ctx, lw, objType, pre, cond)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
