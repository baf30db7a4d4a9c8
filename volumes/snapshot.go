package volumes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v6/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// Options configure Snapshot.
type Options struct {
	// ExtraPVCs are host PVCs in the namespace to snapshot besides the synced ones,
	// such as the control plane's own data PVC (data-NAME-0). They are recorded
	// without a virtual identity.
	ExtraPVCs []string
	// Timeout bounds the wait for every snapshot to become ready to use
	// (DefaultTimeout when zero). A snapshot not ready by then fails.
	Timeout time.Duration
	// AllowPartial records a failed volume with Volume.Error instead of failing
	// the whole snapshot; the caller then marks the bundle partial.
	AllowPartial bool
	// DryRun looks everything up and reports each action it would take to Print
	// (default: a "[dry-run] ..." line on stdout), creating nothing.
	DryRun bool
	Print  func(action string)
}

// item is one PVC on its way to a volume record.
type item struct {
	vol     bundle.Volume
	pvc     *corev1.PersistentVolumeClaim
	vs      string // the temporary VolumeSnapshot's name, once created
	content string // its bound VolumeSnapshotContent
	lastErr string // the snapshot's last status.error while waiting
	err     error
}

// Snapshot takes a CSI snapshot of every host PVC of the virtual cluster
// vclusterName in the host namespace and returns their records. The storage
// snapshots outlive the call (deletionPolicy Retain); no VolumeSnapshot or
// VolumeSnapshotContent is left behind. Without AllowPartial, any failed volume
// fails the call and the snapshots already taken are deleted again. A namespace
// without volumes gives an empty list. A dry run returns the records it would
// fill, without handles: never write those into a bundle.
func Snapshot(ctx context.Context, c Clients, namespace, vclusterName string, o Options) ([]bundle.Volume, error) {
	if namespace == "" || vclusterName == "" {
		return nil, errors.New("volume snapshot needs the host namespace and the virtual cluster's name")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	dry := printer(o.DryRun, o.Print)
	pvcs, err := findPVCs(ctx, c, namespace, vclusterName, o.ExtraPVCs)
	if err != nil {
		return nil, err
	}
	items := make([]*item, 0, len(pvcs))
	for _, p := range pvcs {
		items = append(items, &item{pvc: p, vol: volumeOf(p)})
	}
	if err := resolve(ctx, c, items); err != nil {
		return nil, err
	}
	if failed := failures(items); len(failed) > 0 && !o.AllowPartial {
		return nil, fmt.Errorf("volume snapshot of %s/%s: %w (set --allow-partial to take the other volumes and mark the bundle partial)", namespace, vclusterName, errors.Join(failed...))
	}

	run := runID()
	if o.DryRun {
		for _, it := range items {
			if it.err != nil {
				dry("skip PVC %s/%s: %v", namespace, it.pvc.Name, it.err)
				it.vol.Error = it.err.Error()
				continue
			}
			dry("create VolumeSnapshot %s/%s of PVC %s (driver %s, class %s), wait until ready (timeout %v), set its content's deletionPolicy to Retain, delete the VolumeSnapshot and its content (the storage snapshot stays)",
				namespace, snapshotName(run, it.pvc.Name), it.pvc.Name, it.vol.Driver, it.vol.VolumeSnapshotClass, o.Timeout)
		}
		return records(items), nil
	}

	// Create every snapshot before waiting for any, so they are taken close together.
	for _, it := range items {
		if it.err == nil {
			it.err = createSnapshot(ctx, c, namespace, run, it)
		}
	}
	waitErr := waitReady(ctx, c, namespace, run, items, o.Timeout)
	if waitErr != nil && ctx.Err() != nil {
		// Interrupted: delete what was made, storage snapshots included.
		discard(ctx, c, namespace, run, items, o.Timeout)
		return nil, fmt.Errorf("volume snapshot interrupted: %w", ctx.Err())
	}
	for _, it := range items {
		if it.err == nil && it.vs != "" {
			it.err = record(ctx, c, namespace, it)
		}
	}
	// Keep the storage snapshots of the good volumes (Retain) before deleting anything.
	if len(failures(items)) == 0 || o.AllowPartial {
		for _, it := range items {
			if it.err == nil {
				it.err = retain(ctx, c, it)
			}
		}
	}
	if failed := failures(items); len(failed) > 0 && !o.AllowPartial {
		discard(ctx, c, namespace, run, items, o.Timeout)
		return nil, fmt.Errorf("volume snapshot of %s/%s: %w; the snapshots taken in this run were deleted again (set --allow-partial to keep the good ones and mark the bundle partial)",
			namespace, vclusterName, errors.Join(failed...))
	}
	cleanup(ctx, c, namespace, run, items, o.Timeout)
	vols := records(items)
	for _, v := range vols {
		if v.Error != "" {
			slog.Warn("volume left out of the snapshot", "pvc", v.Namespace+"/"+v.PVC, "error", v.Error)
		} else {
			slog.Info("volume snapshot taken", "pvc", v.Namespace+"/"+v.PVC, "driver", v.Driver, "handle", v.SnapshotHandle, "restoreSize", v.RestoreSize)
		}
	}
	return vols, nil
}

// Failed reports whether any record is a failed volume (Volume.Error set): the
// bundle holding them is partial.
func Failed(vols []bundle.Volume) bool {
	for _, v := range vols {
		if v.Error != "" {
			return true
		}
	}
	return false
}

// findPVCs lists the PVCs the syncer made for vclusterName, plus extra ones, in name order.
func findPVCs(ctx context.Context, c Clients, namespace, vclusterName string, extra []string) ([]*corev1.PersistentVolumeClaim, error) {
	list, err := c.Kube.CoreV1().PersistentVolumeClaims(namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + vclusterName})
	if err != nil {
		return nil, fmt.Errorf("list the PVCs of virtual cluster %s in host namespace %s: %w (the credentials need list on persistentvolumeclaims)", vclusterName, namespace, err)
	}
	seen := map[string]bool{}
	var out []*corev1.PersistentVolumeClaim
	for i := range list.Items {
		p := &list.Items[i]
		if p.Annotations[AnnotationExclude] == "true" {
			slog.Info("PVC excluded from volume snapshots by annotation", "pvc", namespace+"/"+p.Name, "annotation", AnnotationExclude)
			continue
		}
		seen[p.Name] = true
		out = append(out, p)
	}
	for _, name := range extra {
		if seen[name] {
			continue
		}
		p, err := c.Kube.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get PVC %s/%s to snapshot: %w", namespace, name, err)
		}
		seen[name] = true
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// volumeOf records what a restore needs to re-create the PVC.
func volumeOf(p *corev1.PersistentVolumeClaim) bundle.Volume {
	v := bundle.Volume{
		Namespace:   p.Namespace,
		PVC:         p.Name,
		Labels:      p.Labels,
		Annotations: keepAnnotations(p.Annotations),
		VolumeMode:  string(corev1.PersistentVolumeFilesystem),
	}
	if p.Labels[LabelManagedBy] != "" {
		v.VirtualName = p.Annotations[AnnotationObjectName]
		v.VirtualNamespace = p.Annotations[AnnotationObjectNS]
		if v.VirtualNamespace == "" {
			v.VirtualNamespace = p.Labels[LabelVirtualNamespace]
		}
	}
	if p.Spec.StorageClassName != nil {
		v.StorageClass = *p.Spec.StorageClassName
	}
	if p.Spec.VolumeMode != nil {
		v.VolumeMode = string(*p.Spec.VolumeMode)
	}
	for _, m := range p.Spec.AccessModes {
		v.AccessModes = append(v.AccessModes, string(m))
	}
	if q, ok := p.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
		v.RequestedBytes = q.Value()
	}
	return v
}

// resolve finds each PVC's CSI driver and snapshot class; a PVC that cannot be
// snapshotted gets its error.
func resolve(ctx context.Context, c Clients, items []*item) error {
	if len(items) == 0 {
		return nil
	}
	classes, err := c.Snapshots.SnapshotV1().VolumeSnapshotClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list VolumeSnapshotClasses: %w (are the snapshot.storage.k8s.io/v1 CRDs and the snapshot-controller installed on the host?)", err)
	}
	for _, it := range items {
		p := it.pvc
		if p.Status.Phase != corev1.ClaimBound || p.Spec.VolumeName == "" {
			it.err = fmt.Errorf("PVC %s/%s is not bound (phase %s): there is no volume to snapshot yet", p.Namespace, p.Name, p.Status.Phase)
			continue
		}
		pv, err := c.Kube.CoreV1().PersistentVolumes().Get(ctx, p.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			it.err = fmt.Errorf("PVC %s/%s: get its PersistentVolume %s: %w", p.Namespace, p.Name, p.Spec.VolumeName, err)
			continue
		}
		if pv.Spec.CSI == nil {
			it.err = fmt.Errorf("PVC %s/%s: volume %s is not a CSI volume, and only CSI volumes can be snapshotted (annotate the PVC %s=true to leave it out)", p.Namespace, p.Name, pv.Name, AnnotationExclude)
			continue
		}
		it.vol.Driver = pv.Spec.CSI.Driver
		it.vol.PersistentVolume = pv.Name
		it.vol.VolumeSnapshotClass, it.err = pickClass(p, it.vol.Driver, classes.Items)
	}
	return nil
}

// pickClass is the PVC's annotated (or labelled) class, else the driver's default.
func pickClass(p *corev1.PersistentVolumeClaim, driver string, classes []snapv1.VolumeSnapshotClass) (string, error) {
	want := p.Annotations[AnnotationSnapshotClass]
	if want == "" {
		want = p.Labels[AnnotationSnapshotClass]
	}
	if want != "" {
		for _, cl := range classes {
			if cl.Name != want {
				continue
			}
			if cl.Driver != driver {
				return "", fmt.Errorf("PVC %s/%s asks for VolumeSnapshotClass %s (%s), which is for driver %s, but its volume is on driver %s: name a class of %s", p.Namespace, p.Name, want, AnnotationSnapshotClass, cl.Driver, driver, driver)
			}
			return want, nil
		}
		return "", fmt.Errorf("PVC %s/%s asks for VolumeSnapshotClass %s (%s), which does not exist on the host", p.Namespace, p.Name, want, AnnotationSnapshotClass)
	}
	var defaults []string
	for _, cl := range classes {
		if cl.Driver == driver && cl.Annotations[annotationDefaultClass] == "true" {
			defaults = append(defaults, cl.Name)
		}
	}
	switch len(defaults) {
	case 1:
		return defaults[0], nil
	case 0:
		return "", fmt.Errorf("PVC %s/%s: no default VolumeSnapshotClass for CSI driver %s: create one with the annotation %s: \"true\", or annotate the PVC with %s: CLASS", p.Namespace, p.Name, driver, annotationDefaultClass, AnnotationSnapshotClass)
	default:
		sort.Strings(defaults)
		return "", fmt.Errorf("PVC %s/%s: CSI driver %s has %d default VolumeSnapshotClasses (%s): keep one default, or annotate the PVC with %s: CLASS", p.Namespace, p.Name, driver, len(defaults), strings.Join(defaults, ", "), AnnotationSnapshotClass)
	}
}

func runID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return time.Now().UTC().Format("20060102t150405") + "-" + hex.EncodeToString(b)
}

func snapshotName(run, pvc string) string { return objectName("vcsnap-"+run+"-", pvc) }

func createSnapshot(ctx context.Context, c Clients, namespace, run string, it *item) error {
	name := snapshotName(run, it.pvc.Name)
	class := it.vol.VolumeSnapshotClass
	pvc := it.pvc.Name
	_, err := c.Snapshots.SnapshotV1().VolumeSnapshots(namespace).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{LabelRun: run}},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc},
			VolumeSnapshotClassName: &class,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("PVC %s/%s: create VolumeSnapshot %s: %w", namespace, pvc, name, err)
	}
	it.vs = name
	return nil
}

// waitReady watches the run's VolumeSnapshots until all are ready to use, or the
// timeout. Those not ready by then get an error naming the last status error.
func waitReady(ctx context.Context, c Clients, namespace, run string, items []*item, timeout time.Duration) error {
	byName := map[string]*item{}
	for _, it := range items {
		if it.err == nil && it.vs != "" {
			byName[namespace+"/"+it.vs] = it
		}
	}
	if len(byName) == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	api := c.Snapshots.SnapshotV1().VolumeSnapshots(namespace)
	lw := listWatch(api.List, api.Watch, LabelRun+"="+run)
	start := time.Now()
	err := waitSet(wctx, lw, &snapv1.VolumeSnapshot{}, func(objs map[string]runtime.Object) (bool, error) {
		all := true
		for key, it := range byName {
			vs, _ := objs[key].(*snapv1.VolumeSnapshot)
			if vs == nil || vs.Status == nil {
				all = false
				continue
			}
			if vs.Status.Error != nil && vs.Status.Error.Message != nil {
				it.lastErr = *vs.Status.Error.Message
			}
			if vs.Status.ReadyToUse != nil && *vs.Status.ReadyToUse && vs.Status.BoundVolumeSnapshotContentName != nil {
				it.content = *vs.Status.BoundVolumeSnapshotContentName
				if vs.Status.RestoreSize != nil && it.vol.RestoreSize == 0 {
					it.vol.RestoreSize = vs.Status.RestoreSize.Value()
				}
				continue
			}
			all = false
		}
		return all, nil
	})
	if err == nil {
		return nil
	}
	for _, it := range byName {
		if it.content != "" {
			continue
		}
		last := ""
		if it.lastErr != "" {
			last = " (last error: " + it.lastErr + ")"
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			it.err = fmt.Errorf("PVC %s/%s: VolumeSnapshot %s not ready to use after %v%s: raise --volume-timeout, or check the CSI driver %s and its csi-snapshotter", namespace, it.pvc.Name, it.vs, time.Since(start).Round(time.Millisecond), last, it.vol.Driver)
		} else {
			it.err = fmt.Errorf("PVC %s/%s: wait for VolumeSnapshot %s: %w%s", namespace, it.pvc.Name, it.vs, err, last)
		}
	}
	return err
}

// record reads the snapshot handle and size from the bound content.
func record(ctx context.Context, c Clients, namespace string, it *item) error {
	vsc, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, it.content, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("PVC %s/%s: get VolumeSnapshotContent %s: %w", namespace, it.pvc.Name, it.content, err)
	}
	if vsc.Status == nil || vsc.Status.SnapshotHandle == nil || *vsc.Status.SnapshotHandle == "" {
		return fmt.Errorf("PVC %s/%s: VolumeSnapshotContent %s is ready but has no snapshot handle", namespace, it.pvc.Name, it.content)
	}
	it.vol.SnapshotHandle = *vsc.Status.SnapshotHandle
	it.vol.Driver = vsc.Spec.Driver
	if vsc.Status.RestoreSize != nil && *vsc.Status.RestoreSize > 0 {
		it.vol.RestoreSize = *vsc.Status.RestoreSize
	}
	if it.vol.RestoreSize <= 0 {
		it.vol.RestoreSize = it.vol.RequestedBytes
	}
	return nil
}

// setPolicy patches the content's deletionPolicy and checks that it took.
func setPolicy(ctx context.Context, c Clients, content string, policy snapv1.DeletionPolicy) error {
	patch := []byte(fmt.Sprintf(`{"spec":{"deletionPolicy":%q}}`, policy))
	vsc, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().Patch(ctx, content, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("set deletionPolicy %s on VolumeSnapshotContent %s: %w", policy, content, err)
	}
	if vsc.Spec.DeletionPolicy != policy {
		return fmt.Errorf("VolumeSnapshotContent %s kept deletionPolicy %s after a patch to %s", content, vsc.Spec.DeletionPolicy, policy)
	}
	return nil
}

func retain(ctx context.Context, c Clients, it *item) error {
	if err := setPolicy(ctx, c, it.content, snapv1.VolumeSnapshotContentRetain); err != nil {
		return fmt.Errorf("PVC %s/%s: %w", it.pvc.Namespace, it.pvc.Name, err)
	}
	return nil
}

// cleanup removes the temporary objects: the good volumes' contents are Retain,
// so their storage snapshots stay; failed ones (partial) are discarded.
func cleanup(ctx context.Context, c Clients, namespace, run string, items []*item, timeout time.Duration) {
	var failed []*item
	for _, it := range items {
		if it.err != nil {
			failed = append(failed, it)
		}
	}
	if len(failed) > 0 {
		discard(ctx, c, namespace, run, failed, timeout)
	}
	removeTemporaries(ctx, c, namespace, run, items, timeout)
}

// discard deletes the run's snapshots including their storage snapshots.
func discard(ctx context.Context, c Clients, namespace, run string, items []*item, timeout time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit(timeout))
	defer cancel()
	for _, it := range items {
		if it.vs == "" {
			continue
		}
		if it.content == "" {
			// Not bound yet: look again, the controller may have bound it meanwhile.
			if vs, err := c.Snapshots.SnapshotV1().VolumeSnapshots(namespace).Get(cctx, it.vs, metav1.GetOptions{}); err == nil && vs.Status != nil && vs.Status.BoundVolumeSnapshotContentName != nil {
				it.content = *vs.Status.BoundVolumeSnapshotContentName
			}
		}
		if it.content != "" {
			if err := setPolicy(cctx, c, it.content, snapv1.VolumeSnapshotContentDelete); err != nil && !apierrors.IsNotFound(err) {
				slog.Warn("could not mark a discarded snapshot for deletion; its storage snapshot may stay", "content", it.content, "error", err)
			}
		}
	}
	removeTemporaries(ctx, c, namespace, run, items, timeout)
}

// removeTemporaries deletes the run's VolumeSnapshots, waits until they are gone,
// then deletes their contents (a Retain content outlives its snapshot) and waits again.
func removeTemporaries(ctx context.Context, c Clients, namespace, run string, items []*item, timeout time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit(timeout))
	defer cancel()
	api := c.Snapshots.SnapshotV1().VolumeSnapshots(namespace)
	var snaps, contents []string
	for _, it := range items {
		if it.vs == "" {
			continue
		}
		snaps = append(snaps, namespace+"/"+it.vs)
		if err := api.Delete(cctx, it.vs, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			slog.Warn("could not delete a temporary VolumeSnapshot", "snapshot", namespace+"/"+it.vs, "error", err)
		}
		if it.content != "" {
			contents = append(contents, "/"+it.content)
		}
	}
	hint := fmt.Sprintf("remove them with: kubectl delete volumesnapshots -n %s -l %s=%s (and their VolumeSnapshotContents)", namespace, LabelRun, run)
	if err := waitGone(cctx, listWatch(api.List, api.Watch, LabelRun+"="+run), &snapv1.VolumeSnapshot{}, snaps); err != nil {
		slog.Warn("temporary VolumeSnapshots are not gone", "error", err, "fix", hint)
		return
	}
	capi := c.Snapshots.SnapshotV1().VolumeSnapshotContents()
	for _, name := range contents {
		if err := capi.Delete(cctx, name[1:], metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			slog.Warn("could not delete a temporary VolumeSnapshotContent", "content", name[1:], "error", err)
		}
	}
	if err := waitGone(cctx, listWatch(capi.List, capi.Watch, ""), &snapv1.VolumeSnapshotContent{}, contents); err != nil {
		slog.Warn("temporary VolumeSnapshotContents are not gone", "error", err, "contents", contents)
	}
}

// waitGone waits until none of the keys (namespace/name) is listed any more.
func waitGone(ctx context.Context, lw cache.ListerWatcher, objType runtime.Object, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	return waitSet(ctx, lw, objType, func(objs map[string]runtime.Object) (bool, error) {
		for _, k := range keys {
			if _, ok := objs[k]; ok {
				return false, nil
			}
		}
		return true, nil
	})
}

func failures(items []*item) []error {
	var out []error
	for _, it := range items {
		if it.err != nil {
			out = append(out, it.err)
		}
	}
	return out
}

func records(items []*item) []bundle.Volume {
	out := make([]bundle.Volume, 0, len(items))
	for _, it := range items {
		v := it.vol
		if it.err != nil {
			v.Error = it.err.Error()
			v.SnapshotHandle = ""
		}
		out = append(out, v)
	}
	return out
}
