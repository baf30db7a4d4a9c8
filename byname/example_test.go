package byname_test

import (
	"context"
	"errors"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

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
}
