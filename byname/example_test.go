package byname_test

import (
	"context"
	"errors"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/vcluster"
)

// TestEmbedded uses the package only through its exported names, as a Go program that
// embeds vcsnap does: a virtual cluster that is not there, and options that cannot work,
// come back as errors it can tell apart, before anything on the host is touched.
func TestEmbedded(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewSimpleClientset(&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: "team-a"}})
	h := &byname.Host{Client: cs}

	_, err := byname.Snapshot(ctx, h, "team-a", "vc1", byname.SnapshotOptions{Store: "s3://b/vc1/nightly", Engine: byname.EngineOptions{Image: "vcsnap:dev"}})
	if !errors.Is(err, vcluster.ErrNotFound) {
		t.Errorf("snapshot of a missing virtual cluster: %v, want vcluster.ErrNotFound", err)
	}
	_, err = byname.Restore(ctx, h, "team-a", "vc1", byname.RestoreOptions{Store: "file:///backups/vc1", Engine: byname.EngineOptions{Image: "vcsnap:dev"}})
	if !errors.Is(err, byname.ErrOption) {
		t.Errorf("restore from a local file: %v, want byname.ErrOption", err)
	}
	_, err = byname.Restore(ctx, h, "team-a", "vc1", byname.RestoreOptions{Store: "s3://b/vc1/", ToRevision: 9, Volumes: byname.VolumeRestoreOptions{Include: true}})
	if !errors.Is(err, byname.ErrOption) {
		t.Errorf("volumes of a point in time: %v, want byname.ErrOption", err)
	}
	if _, err := byname.Resume(ctx, h, "team-a", "vc1", nil); !errors.Is(err, vcluster.ErrNotFound) {
		t.Errorf("resume of a missing virtual cluster: %v", err)
	}
	if _, err := byname.Resume(ctx, &byname.Host{}, "team-a", "vc1", nil); !errors.Is(err, byname.ErrOption) {
		t.Errorf("no host configuration: %v", err)
	}
	// Helm and volume snapshots need the host's rest.Config, not only a client.
	if _, err := byname.Restore(ctx, h, "team-a", "vc1", byname.RestoreOptions{Store: "s3://b/k", Create: &byname.CreateOptions{Chart: "/c"}}); !errors.Is(err, byname.ErrOption) {
		t.Errorf("--create with a client only: %v", err)
	}
}

// TestCreateRefusesLeftovers: --create never takes over what an earlier virtual cluster
// of that name left in the namespace (its certificates, config, release or data volume),
// and refuses before it reads the bundle or creates anything.
func TestCreateRefusesLeftovers(t *testing.T) {
	ctx := context.Background()
	for name, obj := range map[string]runtime.Object{
		"certificates": &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc1-certs", Namespace: "team-a"}},
		"config":       &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc-config-vc1", Namespace: "team-a"}},
		"release": &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sh.helm.release.v1.vc1.v1", Namespace: "team-a",
			Labels: map[string]string{"owner": "helm", "name": "vc1"}}},
		"kubeconfig":  &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vc-vc1", Namespace: "team-a"}},
		"data volume": &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-vc1-0", Namespace: "team-a"}},
	} {
		cs := fake.NewSimpleClientset(obj)
		// A Config for helm that nothing dials: the refusal comes first.
		h := &byname.Host{Client: cs, Config: &rest.Config{Host: "https://127.0.0.1:1"}}
		_, err := byname.Restore(ctx, h, "team-a", "vc1", byname.RestoreOptions{
			Store: "s3://b/vc1/nightly", Engine: byname.EngineOptions{Image: "vcsnap:dev"}, Create: &byname.CreateOptions{Chart: "/charts/vcluster"}})
		if !errors.Is(err, byname.ErrExists) {
			t.Errorf("%s left in the namespace: %v, want byname.ErrExists", name, err)
		}
		if actions := cs.Actions(); len(actions) > 0 {
			for _, a := range actions {
				if a.GetVerb() != "get" && a.GetVerb() != "list" {
					t.Errorf("%s: the refused create did %s %s", name, a.GetVerb(), a.GetResource().Resource)
				}
			}
		}
	}
}
