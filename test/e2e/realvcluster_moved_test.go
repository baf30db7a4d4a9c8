package e2e

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/translate"
)

// TestRealVClusterRestoreOntoAnotherName restores a snapshot of the real vcluster
// v0.30.0 vc1 (host namespace team-a, embedded SQLite) into a second real vcluster vc2
// in host namespace team-b (`vcsnap restore vc1 -n team-a --target-kubeconfig K
// --target-name vc2 --target-namespace team-b URL`), with vc1 still running beside it. The translated
// datastore must be one vc2's syncer accepts: vc2 serves the snapshot's objects, its
// syncer runs the Deployment's pod and the Service on the host under vc2's names in
// team-b, nothing in team-b carries vc1's names or labels, its log has no conflict
// with an object it does not manage, and vc1 with its host objects is untouched.
func TestRealVClusterRestoreOntoAnotherName(t *testing.T) {
	rig.RequireIntegration(t)
	sw := newStopwatch(t)
	r := startNodeRig(t, sw, "vcsnap-real-moved", rig.ImageVCSnap, rig.ImageVClusterK8s, rig.ImageVClusterOSS)
	const name, hostNS, name2, hostNS2, ns = "vc1", "team-a", "vc2", "team-b", "shop"
	vc := rig.InstallRealVCluster(t, r.host, r.node, name, hostNS, "")
	sw.lap("helm install vc1 to Ready")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	hostCS := kubernetes.NewForConfigOrDie(r.host.RESTConfig())
	vcs := kubernetes.NewForConfigOrDie(vc.RESTConfig(t))
	shop{configMaps: map[string]map[string]string{"web-config": {"color": "blue"}}, envFrom: "web-config", password: "s3cr3t"}.create(t, ctx, vcs, ns)
	pod1 := waitSyncedPodRunning(t, ctx, vcs, hostCS, name, hostNS, ns, "app=web", "")
	sw.lap("fill + synced pod running")
	before := captureObjects(t, ctx, vcs, ns)
	hostBefore := hostObjects(t, ctx, hostCS, hostNS)
	t.Logf("vc1: %d objects in virtual namespace %s; host objects in %s: %v", len(before), ns, hostNS, hostBefore)

	store := r.podStoreURL(name + "/moved")
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", hostNS, "--image", rig.VCSnapImageRef}
	r.cli.mustJSON(t, &struct{}{}, append(append([]string{"snapshot", "create", name}, kube...), store)...)
	sw.lap("snapshot vc1 by name")

	vc2 := rig.InstallRealVCluster(t, r.host, r.node, name2, hostNS2, "")
	sw.lap("helm install vc2 to Ready")
	// The rig has one node per machine, so "another host" is the same one, named as the
	// target through its own kubeconfig flag.
	target := []string{"--target-kubeconfig", r.host.APIServer.KubeconfigPath, "--target-namespace", hostNS2, "--target-name", name2}
	plan := r.cli.run(t, append(append(append([]string{"restore", name}, kube...), target...), "--dry-run", store)...)
	if plan.Code != 0 || !strings.Contains(plan.Stdout, "translate the datastore of "+hostNS+"/"+name+" for "+hostNS2+"/"+name2) {
		t.Fatalf("restore --target-* dry run: %s", plan)
	}
	t.Logf("restore plan:\n%s", plan.Stdout)
	var out struct {
		Restore     *restore.Result  `json:"restore"`
		Translation *translate.Stats `json:"translation"`
		VCluster    string           `json:"vcluster"`
	}
	res := r.cli.mustJSON(t, &out, append(append(append([]string{"restore", name}, kube...), target...), store)...)
	sw.lap("restore onto vc2")
	t.Logf("the restore's log (pause, engine, resume):\n%s", res.Stderr)
	if out.VCluster != hostNS2+"/"+name2 || out.Translation == nil || out.Translation.HostNames == 0 || out.Translation.Pods == 0 {
		t.Fatalf("restore onto another name: %+v, translation %+v", out, out.Translation)
	}
	t.Logf("translation: %+v", *out.Translation)
	vc2.WaitReady(t, 3*time.Minute)
	sw.lap("vc2 Ready again")

	// vc2's syncer runs the objects on the host under its own names. It creates the host
	// Service without an address and then, as the virtual ClusterIP (vc1's host
	// Service's) differs from the new one, recreates the virtual Service with the new
	// address: a new uid (vcluster's services/syncer.go; upstream behaviour, the same as
	// after a restore in place whose host Service is gone).
	vcs2 := kubernetes.NewForConfigOrDie(vc2.RESTConfig(t))
	pod2 := waitSyncedPodRunning(t, ctx, vcs2, hostCS, name2, hostNS2, ns, "app=web", "")
	hostSvc := "web-x-" + ns + "-x-" + name2
	var svcState string
	for deadline := time.Now().Add(time.Minute); ; {
		hs, herr := hostCS.CoreV1().Services(hostNS2).Get(ctx, hostSvc, metav1.GetOptions{})
		vs, verr := vcs2.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		if herr == nil && verr == nil && hs.Spec.ClusterIP != "" && vs.Spec.ClusterIP == hs.Spec.ClusterIP {
			t.Logf("virtual Service %s/web has the address of host Service %s/%s: %s", ns, hostNS2, hostSvc, hs.Spec.ClusterIP)
			break
		}
		svcState = fmt.Sprintf("host %v %v; virtual %v %v", herr, hs.Spec.ClusterIP, verr, vs.Spec.ClusterIP)
		if time.Now().After(deadline) {
			t.Fatalf("the virtual Service web never took the host Service's address: %s", svcState)
		}
		time.Sleep(time.Second)
	}

	// vc2 serves the snapshot's objects: the rules' changes applied, without the
	// kube-root-ca.crt the rules leave out (the target's controller manager publishes
	// its own) and the Service's identity (recreated, above).
	after := captureObjects(t, ctx, vcs2, ns)
	want := movedCapture(before, hostNS, name, hostNS2, name2)
	for _, m := range []map[string]string{want, after} {
		delete(m, "ConfigMap/"+translate.RootCAConfigMap)
		m["Service/web"] = identityRE.ReplaceAllString(m["Service/web"], "")
	}
	if diff := diffCaptured(want, after); diff != "" {
		t.Fatalf("vc2 serves other objects than vc1's snapshot, translated:\n%s", diff)
	}
	wantHost := map[string]bool{
		"Service/web-x-" + ns + "-x-" + name2:           true,
		"ConfigMap/web-config-x-" + ns + "-x-" + name2:  true,
		"Secret/db-credentials-x-" + ns + "-x-" + name2: true,
		"Pod/" + pod2.Name:                              true,
	}
	deadline := time.Now().Add(time.Minute)
	var hostAfter []string
	for {
		hostAfter = hostObjects(t, ctx, hostCS, hostNS2)
		missing := 0
		for k := range wantHost {
			if !contains(hostAfter, k) {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for k := range wantHost {
		if !contains(hostAfter, k) {
			t.Errorf("host object %s is not in %s: %v", k, hostNS2, hostAfter)
		}
	}
	for _, o := range hostAfter {
		if strings.Contains(o, "-x-"+name+" ") || strings.HasSuffix(o, "-x-"+name) || strings.Contains(o, "managed-by="+name+" ") || strings.HasSuffix(o, "managed-by="+name) {
			t.Errorf("host object %s in %s carries vc1's name", o, hostNS2)
		}
	}
	t.Logf("host objects of vc2 in %s: %v", hostNS2, hostAfter)
	log := vc2.SyncerLog(t, 400)
	for _, bad := range []string{"unmanaged physical object", "conflict", "already exists"} {
		if strings.Contains(strings.ToLower(log), bad) {
			t.Errorf("vc2's syncer log mentions %q:\n%s", bad, grepLines(log, bad))
		}
	}
	sw.lap("vc2 on the host")

	// vc1 is untouched.
	if diff := diffCaptured(before, captureObjects(t, ctx, kubernetes.NewForConfigOrDie(vc.RESTConfig(t)), ns)); diff != "" {
		t.Fatalf("vc1 changed:\n%s", diff)
	}
	if got := hostObjects(t, ctx, hostCS, hostNS); strings.Join(got, ",") != strings.Join(hostBefore, ",") {
		t.Errorf("vc1's host objects in %s changed:\nbefore %v\nafter  %v", hostNS, hostBefore, got)
	}
	t.Logf("vc1's host pod %s still runs; vc2's is %s", pod1.Name, pod2.Name)
	t.Logf("timings: %s", sw.summary())
}

// hostObjects lists the synced pods, Services, ConfigMaps and Secrets in a host
// namespace (those labelled vcluster.loft.sh/managed-by) as "Kind/name managed-by=X",
// sorted; the Services' Endpoints follow their Services.
func hostObjects(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns string) []string {
	t.Helper()
	const managed = "vcluster.loft.sh/managed-by"
	opt := metav1.ListOptions{LabelSelector: managed}
	var out []string
	add := func(kind string, m metav1.ObjectMeta) {
		if m.DeletionTimestamp == nil {
			out = append(out, kind+"/"+m.Name+" managed-by="+m.Labels[managed])
		}
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, opt)
	must2(t, err)
	for _, o := range pods.Items {
		add("Pod", o.ObjectMeta)
	}
	svcs, err := cs.CoreV1().Services(ns).List(ctx, opt)
	must2(t, err)
	for _, o := range svcs.Items {
		add("Service", o.ObjectMeta)
	}
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, opt)
	must2(t, err)
	for _, o := range cms.Items {
		add("ConfigMap", o.ObjectMeta)
	}
	secs, err := cs.CoreV1().Secrets(ns).List(ctx, opt)
	must2(t, err)
	for _, o := range secs.Items {
		add("Secret", o.ObjectMeta)
	}
	sort.Strings(out)
	return out
}

func must2(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func contains(list []string, kindName string) bool {
	for _, s := range list {
		if s == kindName || strings.HasPrefix(s, kindName+" ") {
			return true
		}
	}
	return false
}

func grepLines(log, word string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(strings.ToLower(l), word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// identityRE matches the uid and creationTimestamp lines of a captured object.
var identityRE = regexp.MustCompile(`(?m)^\s*"(uid|creationTimestamp)": "[^"]*",?\n`)

// movedCapture is what the translation rules make of captured objects: the host names
// and host namespace in vcluster's annotations become the target's.
func movedCapture(c map[string]string, fromNS, fromName, toNS, toName string) map[string]string {
	out := map[string]string{}
	for k, v := range c {
		v = strings.ReplaceAll(v, "-x-"+fromName+"\"", "-x-"+toName+"\"")
		v = strings.ReplaceAll(v, "\""+fromNS+"\"", "\""+toNS+"\"")
		out[k] = v
	}
	return out
}
