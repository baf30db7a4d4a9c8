package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/volumes"
)

// TestRealVClusterVolumesByName is the by-name workflow with --include-volumes
// against the real loft-sh/vcluster v0.30.0 (embedded SQLite) on the rig's node:
//
//   - inside the virtual cluster: the shop namespace's objects, and in namespace
//     files two PVCs (data, logs) that a Deployment's pod mounts; the syncer creates
//     the host PVCs (NAME-x-files-x-VC, the rig's CSI class) and runs the pod on the
//     node, which writes random bytes into both volumes (kubectl exec on the host pod:
//     busybox dd from /dev/urandom); the test reads them back (cat, and the pod's
//     own sha256sum);
//   - `vcsnap snapshot create VC -n NS --include-volumes --dry-run` plans two
//     VolumeSnapshots and creates none; the snapshot records both volumes (driver,
//     handle, virtual name) in the manifest, the storage snapshots exist on the
//     driver's storage, and no VolumeSnapshot objects are left;
//   - the bytes in both volumes and the objects are changed;
//   - a restore without --replace-volumes is refused (exit 5) before anything pauses;
//     the dry run with it plans two PVCs replaced after the pod that mounts them;
//   - `vcsnap restore VC -n NS --include-volumes --replace-volumes` deletes that host
//     pod, replaces the PVCs (new PVs from the snapshots) and the datastore; the
//     vcluster is Ready, its API serves the captured objects, its PVCs are Bound to
//     the new host volumes, and the syncer runs the Deployment's pod again, which
//     reads the ORIGINAL bytes from both restored volumes (kubectl exec cat);
//   - from SQLite to deployed etcd as a user does it: new bytes, a new snapshot by
//     name with volumes, `helm upgrade` with deployed etcd (a Deployment on an empty
//     etcd, whose syncer deletes every host object it had synced, the PVCs too),
//     then `vcsnap restore VC -n NS --include-volumes` of the SQLite bundle into the
//     deployed etcd: the vcluster serves the same objects (the Service recreated by
//     the syncer with a new uid), its PVCs are back, and the pod runs again, reading
//     the new bytes;
//   - `snapshot delete --include-volumes` removes the storage snapshots with the bundles.
//
// It replaces the stand-in's byNameVolumes (TestVClusterByName/sqlite), whose host
// PVCs were made by the test in the syncer's shape, written through the driver's
// directory and restored with no pod using them.
func TestRealVClusterVolumesByName(t *testing.T) {
	rig.RequireIntegration(t)
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-real-vol", rig.ImageVCSnap, rig.ImageVClusterK8s, rig.ImageVClusterOSS)
	const name, hostNS, ns, fns = "vc1", "team-v", "shop", "files"
	vc := rig.InstallRealVCluster(t, r.host, r.node, name, hostNS, "")
	sw.lap("helm install to Ready")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	snaps, err := volumes.NewClients(r.host.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	// The virtual cluster's content: shop, and the volumes in files.
	shop{configMaps: map[string]map[string]string{"cm-0": {"color": "blue"}, "cm-1": {"feature.x": "on"}}, password: "s3cr3t-before"}.create(t, ctx, vcs, ns)
	claims := []string{"data", "logs"}
	createFileStore(t, ctx, vcs, fns, claims)
	pod := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, fns, "app=store", "")
	hostPVC := map[string]string{} // virtual claim -> host PVC
	oldPV := map[string]string{}
	for _, c := range claims {
		hostPVC[c] = volumes.HostPVCName(c, fns, name)
		p, err := hostCS.CoreV1().PersistentVolumeClaims(hostNS).Get(ctx, hostPVC[c], metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.ClaimBound || p.Labels[volumes.LabelManagedBy] != name {
			t.Fatalf("host PVC %s/%s of virtual %s/%s: %v %+v; want it Bound and managed by %s", hostNS, hostPVC[c], fns, c, err, p, name)
		}
		oldPV[c] = p.Spec.VolumeName
	}
	want := map[string][]byte{} // virtual claim -> the bytes at the snapshot
	for _, c := range claims {
		want[c] = podWrite(t, r, hostNS, pod.Name, "/"+c+"/payload.bin", 200)
	}
	sw.lap("fill, synced pod running, bytes written in the pod")
	before := captureObjects(t, ctx, vcs, ns)
	for k, v := range captureObjects(t, ctx, vcs, fns) {
		before[fns+"/"+k] = v
	}
	t.Logf("captured %d objects; host pod %s writes to host PVCs %v (PVs %v)", len(before), pod.Name, hostPVC, oldPV)

	noSnapshotObjects := func(when string) {
		t.Helper()
		vs, err := snaps.Snapshots.SnapshotV1().VolumeSnapshots(hostNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vsc, err := snaps.Snapshots.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(vs.Items)+len(vsc.Items) != 0 {
			t.Fatalf("%s: %d VolumeSnapshots and %d VolumeSnapshotContents left", when, len(vs.Items), len(vsc.Items))
		}
	}
	store := r.podStoreURL(name + "/with-volumes")
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, "--image", rig.VCSnapImageRef}
	withVolumes := append(append([]string(nil), kube...), "--include-volumes", "--volume-timeout", "3m")

	// The snapshot: a dry run, then the real one.
	res := r.cli.run(t, append(append([]string{"snapshot", "create", name}, withVolumes...), "--dry-run", store)...)
	if res.Code != 0 || strings.Count(res.Stdout, "[dry-run] create VolumeSnapshot") != len(claims) {
		t.Fatalf("snapshot dry run with volumes: %s; want %d VolumeSnapshots planned", res, len(claims))
	}
	noSnapshotObjects("after the snapshot dry run")
	var created snapshot.CreateResult
	r.cli.mustJSON(t, &created, append(append([]string{"snapshot", "create", name}, withVolumes...), store)...)
	sw.lap("snapshot by name with volumes")
	noSnapshotObjects("after the snapshot")
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the snapshot")
	var desc snapshot.Entry
	r.cli.mustJSON(t, &desc, "snapshot", "describe", store)
	m := desc.Manifest
	if m == nil || len(m.Volumes) != len(claims) || m.Partial || m.Source.VClusterName != name || m.Source.Datastore != "kine-sqlite" {
		t.Fatalf("manifest: %+v; want %d volumes of the kine-sqlite of %s, not partial", m, len(claims), name)
	}
	for _, v := range m.Volumes {
		if v.SnapshotHandle == "" || v.Driver != r.host.DriverName || v.Namespace != hostNS || v.VirtualNamespace != fns ||
			hostPVC[v.VirtualName] != v.PVC || v.PersistentVolume != oldPV[v.VirtualName] {
			t.Fatalf("volume record %+v; want one of the host PVCs %v in %s, virtual namespace %s, driver %s", v, hostPVC, hostNS, fns, r.host.DriverName)
		}
		if _, err := os.Stat(r.host.SnapshotFile(v.SnapshotHandle)); err != nil {
			t.Fatalf("storage snapshot of %s: %v", v.PVC, err)
		}
	}

	// Change the bytes in both volumes (from inside the pod) and the objects.
	for _, c := range claims {
		if changed := podWrite(t, r, hostNS, pod.Name, "/"+c+"/payload.bin", 50); bytes.Equal(changed, want[c]) {
			t.Fatalf("the change of %s did not change its bytes", c)
		}
	}
	mutateShop(t, ctx, vcs, hostCS, name, hostNS, ns, true)
	sw.lap("change bytes and objects")

	// Over the existing PVCs without --replace-volumes: refused before anything pauses.
	res = r.cli.run(t, append(append([]string{"restore", name}, withVolumes...), store)...)
	if res.Code != 5 || !strings.Contains(res.Stderr, "--replace-volumes") || !strings.Contains(res.Stderr, "nothing was paused") {
		t.Fatalf("restore over existing PVCs: %s; want exit 5 naming --replace-volumes", res)
	}
	noSnapshotObjects("after the refused restore")
	if got := podRead(t, r, hostNS, pod.Name, "/data/payload.bin"); bytes.Equal(got, want["data"]) {
		t.Fatal("the refused restore changed the volume")
	}
	replace := append(append([]string(nil), withVolumes...), "--replace-volumes")
	res = r.cli.run(t, append(append([]string{"restore", name}, replace...), "--dry-run", store)...)
	if res.Code != 0 || strings.Count(res.Stdout, "[dry-run] create PVC") != len(claims) ||
		strings.Count(res.Stdout, "[dry-run] delete the existing PVC") != len(claims) || !strings.Contains(res.Stdout, "[dry-run] pause") ||
		strings.Count(res.Stdout, "[dry-run] delete pod "+hostNS+"/"+pod.Name+",") != len(claims) {
		t.Fatalf("restore dry run with --replace-volumes: %s; want %d PVCs replaced after the pod %s that mounts them is deleted", res, len(claims), pod.Name)
	}
	t.Logf("restore plan:\n%s", res.Stdout)
	noSnapshotObjects("after the restore dry run")
	sw.lap("refused restore + dry run")

	// The restore.
	var restored RestoreByNameOutput
	res = r.cli.mustJSON(t, &restored, append(append([]string{"restore", name}, replace...), store)...)
	sw.lap("restore by name with volumes")
	t.Logf("the restore's log:\n%s", res.Stderr)
	if len(restored.Volumes) != len(claims) {
		t.Fatalf("restore output volumes: %+v; want %d", restored.Volumes, len(claims))
	}
	for _, v := range restored.Volumes {
		if !v.Replaced || !v.Bound || v.VolumeName == "" || v.VolumeName == oldPV[v.From.VirtualName] || v.PVC != hostPVC[v.From.VirtualName] {
			t.Fatalf("restored volume %+v; want host PVC %s replaced and bound to a new PV", v, hostPVC[v.From.VirtualName])
		}
	}
	noSnapshotObjects("after the restore")
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the restore")
	vc.WaitReady(t, 3*time.Minute)
	sw.lap("Ready again")
	vcs = kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	after := captureObjects(t, ctx, vcs, ns)
	for k, v := range captureObjects(t, ctx, vcs, fns) {
		after[fns+"/"+k] = v
	}
	if diff := diffCaptured(before, after); diff != "" {
		t.Fatalf("the restored vcluster serves other objects than the snapshot's:\n%s", diff)
	}
	waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	pod2 := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, fns, "app=store", "")
	if pod2.UID == pod.UID {
		t.Fatalf("host pod %s is the one from before the restore; want a new one on the restored volumes", pod2.Name)
	}
	for _, c := range claims {
		if got := podRead(t, r, hostNS, pod2.Name, "/"+c+"/payload.bin"); !bytes.Equal(got, want[c]) {
			t.Fatalf("after the restore, %s in pod %s holds %d bytes that are not the snapshot's %d", c, pod2.Name, len(got), len(want[c]))
		}
	}
	t.Logf("the syncer runs %s again on the node; it reads the snapshot's bytes from both restored volumes", pod2.Name)
	waitVirtualPVCsBound(t, ctx, vcs, hostCS, hostNS, fns, claims, hostPVC)
	// The restored virtual PVCs still name the old volumes; the syncer recreates them.
	t.Logf("the syncer on the restored PVCs:\n%s", grepLines(vc.SyncerLog(t, 2000), "volumename differs"))
	sw.lap("objects, pod and bytes back")

	// From embedded SQLite to deployed etcd, as a user moves a live vcluster to another
	// backing store: a fresh snapshot by name (volumes included), `helm upgrade` with
	// deployed etcd (vcluster's CLI allows that change, but carries no data over: the
	// chart replaces the StatefulSet by a Deployment on a new, empty etcd), then a
	// restore by name into it.
	want2 := map[string][]byte{} // new bytes, so that only this snapshot's volumes match
	for _, c := range claims {
		want2[c] = podWrite(t, r, hostNS, pod2.Name, "/"+c+"/payload.bin", 100)
	}
	store2 := r.podStoreURL(name + "/before-etcd")
	var created2 snapshot.CreateResult
	r.cli.mustJSON(t, &created2, append(append([]string{"snapshot", "create", name}, withVolumes...), store2)...)
	if created2.Manifest == nil || len(created2.Manifest.Volumes) != len(claims) || created2.Manifest.Source.Datastore != "kine-sqlite" {
		t.Fatalf("snapshot before the move to etcd: %+v; want the kine-sqlite and %d volumes", created2.Manifest, len(claims))
	}
	sw.lap("etcd: snapshot on SQLite")
	vc.Upgrade(t, rig.RealVClusterDeployedEtcdValues(r.host.StorageClass))
	sw.lap("etcd: helm upgrade to deployed etcd, Ready")
	if vc.Workload != "Deployment" || vc.EtcdStatefulSet != name+"-etcd" {
		t.Fatalf("after the upgrade: %s %s, etcd %q; want a Deployment and StatefulSet %s-etcd", vc.Workload, name, vc.EtcdStatefulSet, name)
	}
	vcs = kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	if _, err := vcs.CoreV1().Namespaces().Get(ctx, fns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("namespace %s on the new etcd before the restore: %v; want NotFound (an empty store)", fns, err)
	}
	// The syncer on the empty store deletes every host object it had synced, the
	// workload's PVCs with their data too: the volume snapshots are what brings it back.
	var state string
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		objs := hostObjects(t, ctx, hostCS, hostNS)
		state = fmt.Sprintf("host objects %v", objs)
		going := 0
		for _, c := range claims {
			p, err := hostCS.CoreV1().PersistentVolumeClaims(hostNS).Get(ctx, hostPVC[c], metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				going++
				state += "; " + hostPVC[c] + " gone"
			case err == nil && p.DeletionTimestamp != nil:
				going++
				state += "; " + hostPVC[c] + " being deleted"
			default:
				state += fmt.Sprintf("; %s: %v", hostPVC[c], err)
			}
		}
		if len(objs) == 0 && going == len(claims) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the vcluster on the empty etcd did not remove its host objects within 2m: %s", state)
		}
	}
	t.Logf("on the empty etcd the syncer removed the synced host objects: %s", state)
	// A plain --include-volumes: nothing to replace (a PVC still being deleted is waited for).
	var moved RestoreByNameOutput
	res = r.cli.mustJSON(t, &moved, append(append([]string{"restore", name}, withVolumes...), store2)...)
	sw.lap("etcd: restore by name")
	t.Logf("the restore into deployed etcd:\n%s", res.Stderr)
	if moved.Datastore != "deployed-etcd" || moved.Restore == nil || moved.Restore.Manifest == nil || moved.Restore.Manifest.Source.Datastore != "kine-sqlite" || len(moved.Volumes) != len(claims) {
		t.Fatalf("restore into deployed etcd: datastore %q, result %+v, %d volumes; want the kine-sqlite bundle in etcd with %d volumes", moved.Datastore, moved.Restore, len(moved.Volumes), len(claims))
	}
	noEngineLeft(t, ctx, hostCS, hostNS, name, "after the restore into etcd")
	noSnapshotObjects("after the restore into etcd")
	vc.WaitReady(t, 3*time.Minute)
	vcs = kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	after = captureObjects(t, ctx, vcs, ns)
	for k, v := range captureObjects(t, ctx, vcs, fns) {
		after[fns+"/"+k] = v
	}
	// The Service's host Service was deleted on the empty etcd, so the syncer recreates
	// the restored virtual Service (a new uid; vcluster's services/syncer.go).
	wantMoved := map[string]string{}
	for k, v := range before {
		wantMoved[k] = v
	}
	for _, m := range []map[string]string{wantMoved, after} {
		m["Service/web"] = identityRE.ReplaceAllString(m["Service/web"], "")
	}
	if diff := diffCaptured(wantMoved, after); diff != "" {
		t.Fatalf("the vcluster on deployed etcd serves other objects than the snapshot's:\n%s", diff)
	}
	waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	pod3 := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, fns, "app=store", "")
	for _, c := range claims {
		if got := podRead(t, r, hostNS, pod3.Name, "/"+c+"/payload.bin"); !bytes.Equal(got, want2[c]) {
			t.Fatalf("on deployed etcd, %s in pod %s holds %d bytes that are not the snapshot's %d", c, pod3.Name, len(got), len(want2[c]))
		}
	}
	waitVirtualPVCsBound(t, ctx, vcs, hostCS, hostNS, fns, claims, hostPVC)
	t.Logf("on deployed etcd the syncer runs %s, which reads the snapshot's bytes", pod3.Name)
	sw.lap("etcd: objects, pod and bytes back")

	// Deleting the bundles with their volumes removes the storage snapshots too.
	for _, b := range []struct {
		url  string
		vols []bundle.Volume
	}{{store, m.Volumes}, {store2, created2.Manifest.Volumes}} {
		res = r.cli.run(t, "snapshot", "delete", "--include-volumes", "--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, b.url)
		if res.Code != 0 {
			t.Fatalf("delete with volumes: %s", res)
		}
		for _, v := range b.vols {
			if _, err := os.Stat(r.host.SnapshotFile(v.SnapshotHandle)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("storage snapshot of %s still there after the bundle's deletion: %v", v.PVC, err)
			}
		}
		if d := r.cli.run(t, "snapshot", "describe", b.url); d.Code != 4 {
			t.Fatalf("after delete, describe: %s; want exit 4", d)
		}
	}
	noSnapshotObjects("after the delete")
	sw.lap("delete with volumes")
	t.Logf("timings: real vcluster Ready %.1fs after helm install; whole test %s", vc.ReadyAfter.Seconds(), sw.summary())
}

// RestoreByNameOutput is the part of `restore NAME -o json` this test reads.
type RestoreByNameOutput struct {
	Volumes   []volumes.Restored `json:"volumes"`
	Datastore string             `json:"datastore"`
	Restore   *restore.Result    `json:"restore"`
}

// createFileStore creates namespace ns with PVCs claims (no storage class: the host's
// default) and the Deployment store, one pod that mounts each claim at /<claim> and
// sleeps: the rig's busybox image (the real vcluster's Kubernetes image), so that the
// test can write and read the volumes from inside it.
func createFileStore(t *testing.T, ctx context.Context, vcs kubernetes.Interface, ns string, claims []string) {
	t.Helper()
	must := mustOK(t)
	must(vcs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	container := corev1.Container{Name: "store", Image: rig.ImageRef(rig.ImageVClusterK8s), ImagePullPolicy: corev1.PullNever,
		Command: []string{"/bin/busybox", "sleep", "31536000"}}
	var vols []corev1.Volume
	for _, c := range claims {
		must(vcs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: c},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
			},
		}, metav1.CreateOptions{}))
		vols = append(vols, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
		container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: c, MountPath: "/" + c})
	}
	replicas, grace := int32(1), int64(1)
	podLabels := map[string]string{"app": "store"}
	must(vcs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "store"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: podLabels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{container}, Volumes: vols, TerminationGracePeriodSeconds: &grace}},
		},
	}, metav1.CreateOptions{}))
}

// podWrite makes the pod write kib KiB of random bytes into file (busybox dd from
// /dev/urandom, then sync) and returns them, read back with podRead.
func podWrite(t *testing.T, r *nodeRig, ns, pod, file string, kib int) []byte {
	t.Helper()
	kubectlExec(t, r, ns, pod, "/bin/busybox", "dd", "if=/dev/urandom", "of="+file, "bs=1024", fmt.Sprint("count=", kib))
	kubectlExec(t, r, ns, pod, "/bin/busybox", "sync")
	b := podRead(t, r, ns, pod, file)
	if len(b) != kib<<10 {
		t.Fatalf("pod %s wrote %d bytes into %s; want %d", pod, len(b), file, kib<<10)
	}
	return b
}

// podRead is the content of file in the host pod's container (kubectl exec cat),
// checked against the sha256sum the pod computes itself.
func podRead(t *testing.T, r *nodeRig, ns, pod, file string) []byte {
	t.Helper()
	b := kubectlExec(t, r, ns, pod, "/bin/busybox", "cat", file)
	inPod, _, _ := strings.Cut(string(kubectlExec(t, r, ns, pod, "/bin/busybox", "sha256sum", file)), " ")
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != inPod {
		t.Fatalf("read %d bytes of %s from pod %s with sha256 %x; the pod says %s", len(b), file, pod, sum, inPod)
	}
	return b
}

func kubectlExec(t *testing.T, r *nodeRig, ns, pod string, command ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "exec", "-n", ns, pod, "-c", "store"}
	cmd := exec.CommandContext(ctx, rig.Tool(t, "kubectl"), append(append(args, "--"), command...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl exec %s/%s %v: %v\n%s", ns, pod, command, err, stderr.String())
	}
	return stdout.Bytes()
}

// waitVirtualPVCsBound waits until each virtual claim is Bound to the volume its host
// PVC is bound to (the syncer copies the host's volumeName into the virtual PVC).
func waitVirtualPVCsBound(t *testing.T, ctx context.Context, vcs, hostCS kubernetes.Interface, hostNS, ns string, claims []string, hostPVC map[string]string) {
	t.Helper()
	var state string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		state = ""
		ok := true
		for _, c := range claims {
			hp, herr := hostCS.CoreV1().PersistentVolumeClaims(hostNS).Get(ctx, hostPVC[c], metav1.GetOptions{})
			vp, verr := vcs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, c, metav1.GetOptions{})
			if herr != nil || verr != nil {
				ok, state = false, state+fmt.Sprintf("; %s: %v %v", c, herr, verr)
				continue
			}
			state += fmt.Sprintf("; %s: virtual %s %q, host %s %q", c, vp.Status.Phase, vp.Spec.VolumeName, hp.Status.Phase, hp.Spec.VolumeName)
			if vp.Status.Phase != corev1.ClaimBound || hp.Spec.VolumeName == "" || vp.Spec.VolumeName != hp.Spec.VolumeName {
				ok = false
			}
		}
		if ok {
			t.Logf("virtual PVCs bound to the restored volumes%s", state)
			return
		}
	}
	t.Fatalf("virtual PVCs not bound to the restored host volumes within 2m%s", state)
}
