package e2e

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/test/rig"
	"github.com/vcsnap/vcsnap/translate"
)

// movedServiceCIDR is the service range of the virtual cluster the bundle moves into;
// the source's is rig.DefaultServiceCIDR (10.96.0.0/16).
const movedServiceCIDR = "10.97.0.0/16"

// restoreOntoAnotherName is the by-name restore onto another host namespace, name and
// service range (translate's rules, wired through --target-namespace/--target-name): a
// second vcluster-shaped cluster on the rig's node, "moved" in "team-moved" with its own
// PKI and service range, gets the bundle of vc (taken when vc served before). Its API
// then serves the snapshot's objects, changed exactly as the rules say: pods no longer
// bound to a node and reset to Pending, Services outside its range without a ClusterIP;
// everything else as it was. The engine Job runs in the target's namespace.
func restoreOntoAnotherName(t *testing.T, r *nodeRig, vc *rig.VClusterOnNode, store string, before map[string][]byte, sw *stopwatch) {
	moved := rig.StartVClusterOnNode(t, r.host, r.node, rig.VClusterOptions{Name: "moved", Namespace: "team-moved", ServiceCIDR: movedServiceCIDR})
	sw.lap("start the target virtual cluster")
	kube := []string{"--kubeconfig", r.host.APIServer.KubeconfigPath, "-n", vc.Namespace, "--image", rig.VCSnapImageRef}
	// The rig has one node per machine, so "another host" is the same one, named as the
	// target through its own kubeconfig flag.
	target := []string{"--target-kubeconfig", r.host.APIServer.KubeconfigPath, "--target-namespace", moved.Namespace, "--target-name", moved.Name}

	plan := r.cli.run(t, append(append(append([]string{"restore", vc.Name}, kube...), target...), "--dry-run", store)...)
	if plan.Code != 0 || !strings.Contains(plan.Stdout, "translate the datastore of "+vc.Namespace+"/"+vc.Name+" for team-moved/moved") ||
		!strings.Contains(plan.Stdout, movedServiceCIDR) {
		t.Fatalf("restore --target-* dry run: %s", plan)
	}
	var out struct {
		Restore     *restore.Result  `json:"restore"`
		Translation *translate.Stats `json:"translation"`
		VCluster    string           `json:"vcluster"`
	}
	r.cli.mustJSON(t, &out, append(append(append([]string{"restore", vc.Name}, kube...), target...), store)...)
	sw.lap("restore onto another name")
	if out.VCluster != "team-moved/moved" || out.Translation == nil || out.Translation.Pods == 0 || out.Translation.Services == 0 {
		t.Fatalf("restore onto another name: %+v, translation %+v", out, out.Translation)
	}
	moved.WaitReady(t, time.Minute)
	after := rig.DumpAll(t, moved.RESTConfig(t))
	want := movedDump(t, before)
	// The apiserver publishes its own client CA here at startup: the target's PKI.
	for _, d := range []map[string][]byte{want, after} {
		delete(d, "core/v1/configmaps/kube-system/extension-apiserver-authentication")
	}
	if diff := rig.DiffDumps(want, after); diff != "" {
		t.Fatalf("the moved virtual cluster serves other objects than the rules make of the snapshot's:\n%s", diff)
	}
	t.Logf("moved: %+v", *out.Translation)
	sw.lap("compare the moved cluster")
}

// movedDump applies the rules' documented effect to a dump of a cluster without Nodes,
// kube-root-ca.crt or host-name annotations: pods rescheduled, Services outside
// movedServiceCIDR without a ClusterIP.
func movedDump(t *testing.T, before map[string][]byte) map[string][]byte {
	t.Helper()
	want := map[string][]byte{}
	for k, raw := range before {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		spec, _ := obj["spec"].(map[string]any)
		switch {
		case strings.HasPrefix(k, "core/v1/pods/"):
			status := obj["status"].(map[string]any)
			if phase := status["phase"]; phase == "Succeeded" || phase == "Failed" {
				break
			}
			delete(spec, "nodeName")
			next := map[string]any{"phase": "Pending"}
			if q, ok := status["qosClass"]; ok {
				next["qosClass"] = q
			}
			obj["status"] = next
		case strings.HasPrefix(k, "core/v1/services/"):
			if ip, _ := spec["clusterIP"].(string); ip != "" && ip != "None" && !strings.HasPrefix(ip, "10.97.") {
				delete(spec, "clusterIP")
				delete(spec, "clusterIPs")
			}
		}
		b, err := json.MarshalIndent(obj, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		want[k] = b
	}
	return want
}
