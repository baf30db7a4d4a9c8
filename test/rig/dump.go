package rig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// DumpKey is the key of one object in a DumpAll result:
// "group/version/resource/namespace/name", with "core" for the core group and
// an empty namespace for cluster-scoped objects
// (e.g. "core/v1/configmaps/default/x", "rbac.authorization.k8s.io/v1/clusterroles//admin").
func DumpKey(gvr schema.GroupVersionResource, namespace, name string) string {
	g := gvr.Group
	if g == "" {
		g = "core"
	}
	return strings.Join([]string{g, gvr.Version, gvr.Resource, namespace, name}, "/")
}

// Resources that DumpAll does not list at all.
var dumpSkipResources = map[schema.GroupResource]string{
	// Not stored in the datastore: the apiserver answers with the result of
	// live health probes of etcd, the scheduler and the controller manager.
	{Group: "", Resource: "componentstatuses"}: "live probe, not stored",
}

// dumpSkipObject reports objects that DumpAll leaves out, with the reason.
func dumpSkipObject(gr schema.GroupResource, u *unstructured.Unstructured) (bool, string) {
	// The identity lease of each running kube-apiserver (kube-system/apiserver-<hash>,
	// label apiserver.kubernetes.io/identity): the apiserver renews it every 10 s
	// (spec.renewTime) and a different apiserver process after a restore
	// writes its own. Its content is not cluster state.
	if gr.Group == "coordination.k8s.io" && gr.Resource == "leases" {
		if _, ok := u.GetLabels()["apiserver.kubernetes.io/identity"]; ok {
			return true, "apiserver identity lease"
		}
	}
	return false, ""
}

// normalizeForDump removes from an object what legitimately differs after a
// restore into a datastore whose revision moved forward. Only this:
//
//   - metadata.resourceVersion: the datastore revision of the object's last
//     write. A restore writes every key again at new, higher revisions (it
//     must: clients hold older resourceVersions), so it always changes.
//
// Everything else is compared, including uid, creationTimestamp, generation,
// managedFields (their timestamps are stored in the object and a faithful
// restore copies them), status, finalizers and ownerReferences.
func normalizeForDump(u *unstructured.Unstructured) {
	unstructured.RemoveNestedField(u.Object, "metadata", "resourceVersion")
}

// DumpAll lists every object of every listable API resource (preferred
// version of each group, all namespaces) and returns each as indented JSON
// with sorted keys, keyed by DumpKey. Two dumps of the same state are equal;
// see normalizeForDump and dumpSkipObject for the only exclusions.
// Any discovery or list error fails the test: a partial dump would hide differences.
//
// Nothing else needs excluding on a rig Virtual, and TestVirtualFillDump
// proves it (identical dumps after an apiserver restart and after an etcdutl
// restore with --bump-revision into a new etcd): the apiserver runs with
// --endpoint-reconciler-type=none, so it does not rewrite the default/kubernetes
// Endpoints; what it reconciles at startup (the kubernetes Service, RBAC
// bootstrap roles, system PriorityClasses, APF configuration,
// kube-system/extension-apiserver-authentication) is rewritten only when it
// differs, and it does not differ with the same PKI and version (Virtual keeps
// its PKI across apiserver restarts). Events keep their content (their TTL
// is not part of the object). On a cluster with controllers (a Host) objects
// change on their own (leader-election leases, node leases, Endpoints), so
// compare dumps of virtual clusters only.
func DumpAll(t testing.TB, cfg *rest.Config) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lists, err := dc.ServerPreferredResources()
	if err != nil {
		t.Fatalf("DumpAll: discovery: %v", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	type job struct {
		gvr  schema.GroupVersionResource
		kind string
	}
	var jobs []job
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			t.Fatalf("DumpAll: group version %q: %v", l.GroupVersion, err)
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !hasVerb(r.Verbs, "list") {
				continue
			}
			gvr := gv.WithResource(r.Name)
			if _, skip := dumpSkipResources[gvr.GroupResource()]; skip {
				continue
			}
			jobs = append(jobs, job{gvr, r.Kind})
		}
	}
	// A few lists in parallel: on kine each consistent list waits ~100 ms for
	// the watch cache, so sequential listing of ~50 resources is slow.
	var (
		mu   sync.Mutex
		out  = map[string][]byte{}
		errs []error
		wg   sync.WaitGroup
		next = make(chan job)
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				objs, err := dumpResource(ctx, dyn, j.gvr, j.kind)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				}
				for k, v := range objs {
					out[k] = v
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("DumpAll: %v", errors.Join(errs...))
	}
	return out
}

func dumpResource(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, kind string) (map[string][]byte, error) {
	out := map[string][]byte{}
	cont := ""
	for {
		ul, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 500, Continue: cont})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", gvr, err)
		}
		for i := range ul.Items {
			u := &ul.Items[i]
			if skip, _ := dumpSkipObject(gvr.GroupResource(), u); skip {
				continue
			}
			u.SetAPIVersion(gvr.GroupVersion().String())
			u.SetKind(kind)
			normalizeForDump(u)
			b, err := json.MarshalIndent(u.Object, "", "  ") // maps marshal with sorted keys
			if err != nil {
				return nil, fmt.Errorf("marshal %s %s/%s: %w", gvr, u.GetNamespace(), u.GetName(), err)
			}
			out[DumpKey(gvr, u.GetNamespace(), u.GetName())] = b
		}
		cont = ul.GetContinue()
		if cont == "" {
			return out, nil
		}
	}
}

func hasVerb(verbs []string, v string) bool {
	for _, x := range verbs {
		if x == v {
			return true
		}
	}
	return false
}

// DiffDumps compares two DumpAll results and returns a readable report of
// the differences: objects only in a, only in b, and a line diff of each
// object that differs. It returns "" when the dumps are equal.
func DiffDumps(a, b map[string][]byte) string {
	const maxReport = 256 << 10
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var sb strings.Builder
	var onlyA, onlyB, changed int
	for _, k := range sorted {
		va, inA := a[k]
		vb, inB := b[k]
		switch {
		case inA && !inB:
			onlyA++
			fmt.Fprintf(&sb, "- only in first:  %s\n", k)
		case !inA && inB:
			onlyB++
			fmt.Fprintf(&sb, "+ only in second: %s\n", k)
		case string(va) != string(vb):
			changed++
			fmt.Fprintf(&sb, "~ differs: %s\n%s", k, lineDiff(string(va), string(vb)))
		}
		if sb.Len() > maxReport {
			sb.WriteString("... (report truncated)\n")
			break
		}
	}
	if onlyA+onlyB+changed == 0 {
		return ""
	}
	return fmt.Sprintf("%d objects only in first, %d only in second, %d differ (of %d/%d)\n%s",
		onlyA, onlyB, changed, len(a), len(b), sb.String())
}

// lineDiff is a small line diff: common prefix and suffix trimmed, the middle
// aligned by longest common subsequence when small enough. Lines are cut at
// 200 characters.
func lineDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	pre := 0
	for pre < len(la) && pre < len(lb) && la[pre] == lb[pre] {
		pre++
	}
	suf := 0
	for suf < len(la)-pre && suf < len(lb)-pre && la[len(la)-1-suf] == lb[len(lb)-1-suf] {
		suf++
	}
	ma, mb := la[pre:len(la)-suf], lb[pre:len(lb)-suf]
	var sb strings.Builder
	line := func(prefix, s string) {
		if len(s) > 200 {
			s = s[:200] + fmt.Sprintf("... (%d chars)", len(s))
		}
		sb.WriteString(prefix + s + "\n")
	}
	if pre > 0 {
		line("    ", la[pre-1])
	}
	if len(ma)*len(mb) > 1_000_000 {
		for _, s := range ma {
			line("  - ", s)
		}
		for _, s := range mb {
			line("  + ", s)
		}
	} else {
		// lcs[i][j] = length of the LCS of ma[i:] and mb[j:].
		lcs := make([][]int32, len(ma)+1)
		for i := range lcs {
			lcs[i] = make([]int32, len(mb)+1)
		}
		for i := len(ma) - 1; i >= 0; i-- {
			for j := len(mb) - 1; j >= 0; j-- {
				if ma[i] == mb[j] {
					lcs[i][j] = lcs[i+1][j+1] + 1
				} else {
					lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
				}
			}
		}
		i, j := 0, 0
		for i < len(ma) || j < len(mb) {
			switch {
			case i < len(ma) && j < len(mb) && ma[i] == mb[j]:
				line("    ", ma[i])
				i++
				j++
			case j < len(mb) && (i == len(ma) || lcs[i][j+1] >= lcs[i+1][j]):
				line("  + ", mb[j])
				j++
			default:
				line("  - ", ma[i])
				i++
			}
		}
	}
	if suf > 0 {
		line("    ", la[len(la)-suf])
	}
	return sb.String()
}
