package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v6/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// SourceName is the virtual cluster the volumes were taken from (the
	// manifest's Source.VClusterName); TargetName the one they are restored for,
	// default SourceName. A different target renames the host PVCs the way the
	// syncer names them for the target.
	SourceName string
	TargetName string
	// TargetNamespace is the host namespace to restore into; default each
	// volume's recorded namespace. It must exist.
	TargetNamespace string
	// HandleMap replaces recorded snapshot handles (old -> new), for snapshots
	// copied to another region or account by other means.
	HandleMap map[string]string
	// StorageClass, when set, replaces every recorded storage class (the target
	// host may name its classes differently).
	StorageClass string
	// Force replaces an existing PVC of the same name (deleting it and, with a
	// Delete reclaim policy, its data). Without it Restore refuses with ErrPVCExists;
	// a PVC that is being deleted already is waited for instead, Force or not.
	Force bool
	// StopPods deletes the pods of the virtual cluster TargetName (labelled
	// LabelManagedBy) that mount a PVC being replaced, and waits until they are
	// gone, before any PVC is deleted: Kubernetes keeps a PVC while a pod uses it.
	// The caller has paused the virtual cluster, whose syncer runs them again, on
	// the restored volumes, when it resumes. Without it, or for a pod that is not
	// the virtual cluster's, a PVC in use fails the restore before anything is
	// created or deleted.
	StopPods bool
	// Timeout bounds each wait: snapshots ready, old PVCs gone, PVCs bound
	// (DefaultTimeout when zero).
	Timeout time.Duration
	// DryRun looks everything up and reports each action it would take to Print
	// (default: a "[dry-run] ..." line on stdout), creating nothing.
	DryRun bool
	Print  func(action string)
}

// Restored is one PVC Restore created.
type Restored struct {
	Namespace string
	PVC       string
	// Bound is false when the storage class binds on first consumer: the PVC
	// binds once the virtual cluster's pod using it is scheduled, and the
	// VolumeSnapshot it restores from is kept until then.
	Bound bool
	// VolumeName is the new PV, once bound; the recorded Volume.PersistentVolume
	// is the one the virtual cluster's datastore still names.
	VolumeName string
	// Replaced: an existing PVC of this name was deleted for it (Force).
	Replaced bool
	// From is the volume record it was restored from.
	From bundle.Volume
}

// plan is one volume on its way back.
type plan struct {
	vol       bundle.Volume
	ns, pvc   string
	handle    string
	class     string // storage class, "" for the host default
	vs, vsc   string
	run       string
	request   int64
	labels    map[string]string
	annots    map[string]string
	immediate bool     // the class binds immediately: wait for Bound
	replace   bool     // an existing PVC is deleted first (Force), or waited for (going)
	going     bool     // the existing PVC is being deleted already: nothing to replace, wait until it is gone
	users     []string // pods mounting the PVC being replaced, deleted first (StopPods)
	madePVC   bool
}

// Restore re-creates the PVCs of vols from their snapshot handles: for each, a
// pre-provisioned VolumeSnapshotContent (deletionPolicy Retain, so the storage
// snapshot, which the bundle still refers to, is never deleted by it), a
// VolumeSnapshot bound to it, and the PVC with that snapshot as its dataSource.
// Volumes recorded as failed (Volume.Error) are skipped with a warning. On
// failure the objects this call created are removed again.
func Restore(ctx context.Context, c Clients, vols []bundle.Volume, o RestoreOptions) ([]Restored, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.TargetName == "" {
		o.TargetName = o.SourceName
	}
	if o.SourceName == "" && o.TargetName != "" {
		return nil, errors.New("renaming volumes for another virtual cluster needs the source virtual cluster's name")
	}
	dry := printer(o.DryRun, o.Print)
	run := runID()
	var plans []*plan
	for _, v := range vols {
		if v.Error != "" {
			slog.Warn("volume not restored: the bundle holds no snapshot of it", "pvc", v.Namespace+"/"+v.PVC, "error", v.Error)
			dry("skip PVC %s/%s: not in the bundle (%s)", v.Namespace, v.PVC, v.Error)
			continue
		}
		p, err := makePlan(v, run, o)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	if err := check(ctx, c, plans, o); err != nil {
		return nil, err
	}
	if o.DryRun {
		for _, p := range plans {
			dry("create VolumeSnapshotContent %s (driver %s, snapshot handle %s, deletionPolicy Retain) and VolumeSnapshot %s/%s bound to it; wait until ready", p.vsc, p.vol.Driver, p.handle, p.ns, p.vs)
			for _, pod := range p.users {
				dry("delete pod %s/%s, which mounts PVC %s (the virtual cluster is paused: its syncer runs the pod again on resume), and wait until it is gone", p.ns, pod, p.pvc)
			}
			switch {
			case p.going:
				dry("wait until the PVC %s/%s, which is being deleted, is gone", p.ns, p.pvc)
			case p.replace:
				dry("delete the existing PVC %s/%s (replace) and wait until it is gone", p.ns, p.pvc)
			}
			bind := "wait until Bound, then delete the VolumeSnapshot and its content (the storage snapshot stays)"
			if !p.immediate {
				bind = "the class binds on first consumer: not waiting for Bound, keeping the VolumeSnapshot until then"
			}
			class := p.class
			if class == "" {
				class = "(host default)"
			}
			dry("create PVC %s/%s (%s, class %s, %s) from VolumeSnapshot %s; %s", p.ns, p.pvc, resource.NewQuantity(p.request, resource.BinarySI), class, strings.Join(p.vol.AccessModes, ","), p.vs, bind)
		}
		out := make([]Restored, 0, len(plans))
		for _, p := range plans {
			out = append(out, Restored{Namespace: p.ns, PVC: p.pvc, Replaced: p.replace, From: p.vol})
		}
		return out, nil
	}

	out, err := restorePlans(ctx, c, plans, o)
	if err != nil {
		undo(ctx, c, plans, o.Timeout)
		return nil, err
	}
	return out, nil
}

// HostPVCNameFor is the host PVC name a recorded volume gets when restored for
// the virtual cluster target (renamed from source).
func HostPVCNameFor(v bundle.Volume, source, target string) string {
	if target == "" || target == source {
		return v.PVC
	}
	if v.VirtualName != "" {
		return HostPVCName(v.VirtualName, v.VirtualNamespace, target)
	}
	// The control plane's own PVCs carry its name: data-NAME-0.
	if i := strings.Index(v.PVC, "-"+source+"-"); i >= 0 {
		return v.PVC[:i] + "-" + target + "-" + v.PVC[i+len(source)+2:]
	}
	return v.PVC
}

func makePlan(v bundle.Volume, run string, o RestoreOptions) (*plan, error) {
	if v.SnapshotHandle == "" || v.Driver == "" {
		return nil, fmt.Errorf("volume record of PVC %s/%s has no snapshot handle or driver: the bundle is damaged or was not written by vcsnap", v.Namespace, v.PVC)
	}
	p := &plan{vol: v, run: run, ns: v.Namespace, handle: v.SnapshotHandle, class: v.StorageClass}
	if o.TargetNamespace != "" {
		p.ns = o.TargetNamespace
	}
	if h, ok := o.HandleMap[v.SnapshotHandle]; ok && h != "" {
		p.handle = h
	}
	if o.StorageClass != "" {
		p.class = o.StorageClass
	}
	p.pvc = HostPVCNameFor(v, o.SourceName, o.TargetName)
	p.vs = objectName("vcsnap-"+run+"-", p.pvc)
	p.vsc = objectName("vcsnap-"+run+"-", p.ns+"-"+p.pvc)
	p.request = max(v.RestoreSize, v.RequestedBytes)
	if p.request <= 0 {
		return nil, fmt.Errorf("volume record of PVC %s/%s has no size: the bundle is damaged", v.Namespace, v.PVC)
	}
	p.labels = map[string]string{}
	for k, val := range v.Labels {
		if o.TargetName != o.SourceName && val == o.SourceName && (k == LabelManagedBy || k == "release") {
			val = o.TargetName
		}
		p.labels[k] = val
	}
	p.annots = keepAnnotations(v.Annotations)
	if p.annots == nil {
		p.annots = map[string]string{}
	}
	if _, ok := p.annots[AnnotationHostName]; ok {
		p.annots[AnnotationHostName] = p.pvc
	}
	if _, ok := p.annots[AnnotationHostNamespace]; ok {
		p.annots[AnnotationHostNamespace] = p.ns
	}
	return p, nil
}

// check does the read-only look-ups before anything is created: namespaces,
// existing PVCs, storage classes and their binding modes, duplicate targets.
func check(ctx context.Context, c Clients, plans []*plan, o RestoreOptions) error {
	seen := map[string]string{}
	nsOK := map[string]bool{}
	pods := map[string][]corev1.Pod{}
	for _, p := range plans {
		key := p.ns + "/" + p.pvc
		if other, dup := seen[key]; dup {
			return fmt.Errorf("volumes %s and %s/%s would both be restored as PVC %s", other, p.vol.Namespace, p.vol.PVC, key)
		}
		seen[key] = p.vol.Namespace + "/" + p.vol.PVC
		if !nsOK[p.ns] {
			if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, p.ns, metav1.GetOptions{}); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("host namespace %s does not exist: create it (kubectl create namespace %s) or restore into another one", p.ns, p.ns)
				}
				return fmt.Errorf("get host namespace %s: %w", p.ns, err)
			}
			nsOK[p.ns] = true
		}
		existing, err := c.Kube.CoreV1().PersistentVolumeClaims(p.ns).Get(ctx, p.pvc, metav1.GetOptions{})
		switch {
		case err == nil && existing.DeletionTimestamp != nil:
			// Already going (the syncer of a virtual cluster that started on an empty
			// store deletes the host PVCs it does not know): its data is lost either way.
			p.replace, p.going = true, true
		case err == nil && !o.Force:
			return fmt.Errorf("restore volume into PVC %s: %w; delete it first, restore into another namespace or name, or replace it with --replace-volumes (its data is lost)", key, ErrPVCExists)
		case err == nil:
			p.replace = true
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("get PVC %s: %w", key, err)
		}
		if p.replace {
			if _, listed := pods[p.ns]; !listed {
				list, err := c.Kube.CoreV1().Pods(p.ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					return fmt.Errorf("list the pods in %s that may use the PVCs to replace: %w", p.ns, err)
				}
				pods[p.ns] = list.Items
			}
			users, foreign := podsUsing(pods[p.ns], p.pvc, o.TargetName)
			switch {
			case len(foreign) > 0:
				return fmt.Errorf("replace PVC %s: pods %s mount it and are not the virtual cluster %s's: stop them first", key, strings.Join(foreign, ", "), o.TargetName)
			case len(users) > 0 && !o.StopPods:
				return fmt.Errorf("replace PVC %s: pods %s mount it: stop them first (a PVC in use is not deleted)", key, strings.Join(users, ", "))
			}
			p.users = users
		}
		sc, err := storageClass(ctx, c, p.class)
		if err != nil {
			return fmt.Errorf("restore PVC %s: %w", key, err)
		}
		p.immediate = sc.VolumeBindingMode == nil || *sc.VolumeBindingMode == storagev1.VolumeBindingImmediate
	}
	return nil
}

// storageClass finds the named class, or the host's default for "".
func storageClass(ctx context.Context, c Clients, name string) (*storagev1.StorageClass, error) {
	if name != "" {
		sc, err := c.Kube.StorageV1().StorageClasses().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("storage class %s does not exist on the target host: create it, or choose another with --volume-storage-class", name)
		}
		if err != nil {
			return nil, fmt.Errorf("get storage class %s: %w", name, err)
		}
		return sc, nil
	}
	list, err := c.Kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list storage classes: %w", err)
	}
	for i := range list.Items {
		sc := &list.Items[i]
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			return sc, nil
		}
	}
	return nil, errors.New("the volume had no storage class and the target host has no default one: choose one with --volume-storage-class")
}

func restorePlans(ctx context.Context, c Clients, plans []*plan, o RestoreOptions) ([]Restored, error) {
	if len(plans) == 0 {
		return nil, nil
	}
	for _, p := range plans {
		if err := createSnapshotObjects(ctx, c, p); err != nil {
			return nil, err
		}
	}
	if err := waitRestoreSnapshots(ctx, c, plans, o.Timeout); err != nil {
		return nil, err
	}
	// Only now that every snapshot is known to be usable here are PVCs replaced, once
	// the pods using them are gone.
	if err := stopPods(ctx, c, plans, o.Timeout); err != nil {
		return nil, err
	}
	if err := replaceExisting(ctx, c, plans, o.Timeout); err != nil {
		return nil, err
	}
	for _, p := range plans {
		if err := createPVC(ctx, c, p); err != nil {
			return nil, err
		}
	}
	if err := waitBound(ctx, c, plans, o.Timeout); err != nil {
		return nil, err
	}
	out := make([]Restored, 0, len(plans))
	var done []*plan
	for _, p := range plans {
		r := Restored{Namespace: p.ns, PVC: p.pvc, Bound: p.immediate, Replaced: p.replace, From: p.vol}
		if p.immediate {
			pvc, err := c.Kube.CoreV1().PersistentVolumeClaims(p.ns).Get(ctx, p.pvc, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("get restored PVC %s/%s: %w", p.ns, p.pvc, err)
			}
			r.VolumeName = pvc.Spec.VolumeName
		}
		out = append(out, r)
		if p.immediate {
			done = append(done, p)
		} else {
			slog.Info("PVC restored; it binds when its pod is scheduled (WaitForFirstConsumer), so its VolumeSnapshot stays until then", "pvc", p.ns+"/"+p.pvc, "snapshot", p.vs)
		}
		slog.Info("volume restored", "pvc", p.ns+"/"+p.pvc, "handle", p.handle, "driver", p.vol.Driver)
	}
	deleteSnapshotObjects(ctx, c, done, o.Timeout)
	return out, nil
}

// podsUsing are the pods that mount claim and are not finished (Kubernetes keeps
// a PVC while one of them exists): users are the virtual cluster vcluster's,
// foreign the others.
func podsUsing(pods []corev1.Pod, claim, vcluster string) (users, foreign []string) {
	for i := range pods {
		pod := &pods[i]
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != claim {
				continue
			}
			if vcluster != "" && pod.Labels[LabelManagedBy] == vcluster {
				users = append(users, pod.Name)
			} else {
				foreign = append(foreign, pod.Name)
			}
			break
		}
	}
	return users, foreign
}

// stopPods deletes the pods that use a PVC about to be replaced (StopPods) and
// waits until they are gone; no PVC has been deleted yet.
func stopPods(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) error {
	byNS := map[string][]string{}
	seen := map[string]bool{}
	for _, p := range plans {
		for _, pod := range p.users {
			key := p.ns + "/" + pod
			if seen[key] {
				continue
			}
			seen[key] = true
			slog.Warn("deleting a pod of the paused virtual cluster that mounts a PVC being replaced; its syncer runs it again on resume", "pod", key, "pvc", p.ns+"/"+p.pvc)
			if err := c.Kube.CoreV1().Pods(p.ns).Delete(ctx, pod, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete pod %s, which mounts PVC %s/%s to replace: %w; no PVC was deleted", key, p.ns, p.pvc, err)
			}
			byNS[p.ns] = append(byNS[p.ns], key)
		}
	}
	for ns, keys := range byNS {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		api := c.Kube.CoreV1().Pods(ns)
		err := waitGone(wctx, listWatch(api.List, api.Watch, ""), &corev1.Pod{}, keys)
		cancel()
		if err != nil {
			return fmt.Errorf("wait for the pods %s, which mount PVCs to replace, to be deleted: %w; no PVC was deleted", strings.Join(keys, ", "), err)
		}
	}
	return nil
}

func replaceExisting(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) error {
	byNS := map[string][]string{}
	for _, p := range plans {
		if !p.replace {
			continue
		}
		if p.going {
			slog.Warn("waiting for a PVC that is being deleted", "pvc", p.ns+"/"+p.pvc)
		} else {
			slog.Warn("replacing an existing PVC", "pvc", p.ns+"/"+p.pvc)
		}
		if err := c.Kube.CoreV1().PersistentVolumeClaims(p.ns).Delete(ctx, p.pvc, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the existing PVC %s/%s to replace it: %w", p.ns, p.pvc, err)
		}
		byNS[p.ns] = append(byNS[p.ns], p.ns+"/"+p.pvc)
	}
	for ns, keys := range byNS {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		api := c.Kube.CoreV1().PersistentVolumeClaims(ns)
		err := waitGone(wctx, listWatch(api.List, api.Watch, ""), &corev1.PersistentVolumeClaim{}, keys)
		cancel()
		if err != nil {
			return fmt.Errorf("wait for the replaced PVCs %s to be deleted: %w (a PVC stays while a pod uses it: stop the pods using it)", strings.Join(keys, ", "), err)
		}
	}
	return nil
}

func createSnapshotObjects(ctx context.Context, c Clients, p *plan) error {
	handle := p.handle
	mode := corev1.PersistentVolumeMode(p.vol.VolumeMode)
	var modePtr *corev1.PersistentVolumeMode
	if mode != "" {
		modePtr = &mode
	}
	run := map[string]string{LabelRun: p.run}
	_, err := c.Snapshots.SnapshotV1().VolumeSnapshotContents().Create(ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: p.vsc, Labels: run},
		Spec: snapv1.VolumeSnapshotContentSpec{
			VolumeSnapshotRef: corev1.ObjectReference{Kind: "VolumeSnapshot", APIVersion: snapshotAPIGroup + "/v1", Namespace: p.ns, Name: p.vs},
			DeletionPolicy:    snapv1.VolumeSnapshotContentRetain,
			Driver:            p.vol.Driver,
			Source:            snapv1.VolumeSnapshotContentSource{SnapshotHandle: &handle},
			SourceVolumeMode:  modePtr,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("restore PVC %s/%s: create VolumeSnapshotContent %s: %w", p.ns, p.pvc, p.vsc, err)
	}
	content := p.vsc
	_, err = c.Snapshots.SnapshotV1().VolumeSnapshots(p.ns).Create(ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: p.vs, Namespace: p.ns, Labels: run},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: &content}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("restore PVC %s/%s: create VolumeSnapshot %s: %w", p.ns, p.pvc, p.vs, err)
	}
	return nil
}

// waitRestoreSnapshots waits until every pre-provisioned snapshot is ready: the
// driver on this host found the handle. A handle it cannot see (another region,
// another account) fails here with the driver's message.
func waitRestoreSnapshots(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) error {
	for ns, group := range byNamespace(plans) {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		api := c.Snapshots.SnapshotV1().VolumeSnapshots(ns)
		lastErr := map[string]string{}
		err := waitSet(wctx, listWatch(api.List, api.Watch, ""), &snapv1.VolumeSnapshot{}, func(objs map[string]runtime.Object) (bool, error) {
			all := true
			for _, p := range group {
				vs, _ := objs[p.ns+"/"+p.vs].(*snapv1.VolumeSnapshot)
				if vs == nil || vs.Status == nil || vs.Status.ReadyToUse == nil || !*vs.Status.ReadyToUse {
					all = false
					if vs != nil && vs.Status != nil && vs.Status.Error != nil && vs.Status.Error.Message != nil {
						lastErr[p.vs] = *vs.Status.Error.Message
					}
				}
			}
			return all, nil
		})
		cancel()
		if err != nil {
			var msgs []string
			for _, p := range group {
				if m := lastErr[p.vs]; m != "" {
					msgs = append(msgs, fmt.Sprintf("%s (handle %s, driver %s): %s", p.pvc, p.handle, p.vol.Driver, m))
				}
			}
			if ctx.Err() != nil {
				return fmt.Errorf("volume restore interrupted: %w", ctx.Err())
			}
			return fmt.Errorf("the restored VolumeSnapshots in %s did not become ready: %w; %s. Is the snapshot handle valid on this host (same driver, account and region)? Copy the snapshots first or pass --volume-handle-map", ns, err, strings.Join(msgs, "; "))
		}
	}
	return nil
}

func createPVC(ctx context.Context, c Clients, p *plan) error {
	group := snapshotAPIGroup
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: p.pvc, Namespace: p.ns, Labels: p.labels, Annotations: p.annots},
		Spec: corev1.PersistentVolumeClaimSpec{
			Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(p.request, resource.BinarySI)}},
			DataSource: &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: p.vs},
		},
	}
	for _, m := range p.vol.AccessModes {
		pvc.Spec.AccessModes = append(pvc.Spec.AccessModes, corev1.PersistentVolumeAccessMode(m))
	}
	if len(pvc.Spec.AccessModes) == 0 {
		pvc.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	if p.vol.VolumeMode != "" {
		mode := corev1.PersistentVolumeMode(p.vol.VolumeMode)
		pvc.Spec.VolumeMode = &mode
	}
	if p.class != "" {
		class := p.class
		pvc.Spec.StorageClassName = &class
	}
	if _, err := c.Kube.CoreV1().PersistentVolumeClaims(p.ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("restore volume into PVC %s/%s: %w (it appeared during the restore: is the virtual cluster still running?)", p.ns, p.pvc, ErrPVCExists)
		}
		return fmt.Errorf("create PVC %s/%s: %w", p.ns, p.pvc, err)
	}
	p.madePVC = true
	return nil
}

func waitBound(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) error {
	for ns, group := range byNamespace(plans) {
		var wait []*plan
		for _, p := range group {
			if p.immediate {
				wait = append(wait, p)
			}
		}
		if len(wait) == 0 {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		api := c.Kube.CoreV1().PersistentVolumeClaims(ns)
		pending := map[string]string{}
		err := waitSet(wctx, listWatch(api.List, api.Watch, ""), &corev1.PersistentVolumeClaim{}, func(objs map[string]runtime.Object) (bool, error) {
			all := true
			for _, p := range wait {
				pvc, _ := objs[p.ns+"/"+p.pvc].(*corev1.PersistentVolumeClaim)
				if pvc == nil || pvc.Status.Phase != corev1.ClaimBound {
					all = false
					if pvc != nil {
						pending[p.pvc] = string(pvc.Status.Phase)
					}
				}
			}
			return all, nil
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("volume restore interrupted: %w", ctx.Err())
			}
			return fmt.Errorf("restored PVCs in %s not Bound after %v (%v): %w; see kubectl describe pvc -n %s for the provisioner's events", ns, timeout, pending, err, ns)
		}
	}
	return nil
}

func byNamespace(plans []*plan) map[string][]*plan {
	out := map[string][]*plan{}
	for _, p := range plans {
		out[p.ns] = append(out[p.ns], p)
	}
	return out
}

// deleteSnapshotObjects removes the restore's VolumeSnapshots and contents once
// their PVCs are bound. The contents are Retain: the storage snapshots stay.
func deleteSnapshotObjects(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit(timeout))
	defer cancel()
	for ns, group := range byNamespace(plans) {
		api := c.Snapshots.SnapshotV1().VolumeSnapshots(ns)
		var keys []string
		for _, p := range group {
			if err := api.Delete(cctx, p.vs, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				slog.Warn("could not delete the restore's VolumeSnapshot", "snapshot", ns+"/"+p.vs, "error", err)
			}
			keys = append(keys, ns+"/"+p.vs)
		}
		if err := waitGone(cctx, listWatch(api.List, api.Watch, ""), &snapv1.VolumeSnapshot{}, keys); err != nil {
			slog.Warn("the restore's VolumeSnapshots are not gone", "namespace", ns, "error", err)
		}
	}
	capi := c.Snapshots.SnapshotV1().VolumeSnapshotContents()
	var keys []string
	for _, p := range plans {
		if err := capi.Delete(cctx, p.vsc, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			slog.Warn("could not delete the restore's VolumeSnapshotContent", "content", p.vsc, "error", err)
		}
		keys = append(keys, "/"+p.vsc)
	}
	if err := waitGone(cctx, listWatch(capi.List, capi.Watch, ""), &snapv1.VolumeSnapshotContent{}, keys); err != nil {
		slog.Warn("the restore's VolumeSnapshotContents are not gone", "error", err)
	}
}

// undo removes what a failed restore created: its PVCs and snapshot objects. The
// storage snapshots are untouched (the contents are Retain).
func undo(ctx context.Context, c Clients, plans []*plan, timeout time.Duration) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit(timeout))
	defer cancel()
	for _, p := range plans {
		if p.madePVC {
			if err := c.Kube.CoreV1().PersistentVolumeClaims(p.ns).Delete(cctx, p.pvc, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				slog.Warn("could not remove a PVC of the failed restore", "pvc", p.ns+"/"+p.pvc, "error", err)
			}
		}
	}
	deleteSnapshotObjects(ctx, c, plans, timeout)
}
