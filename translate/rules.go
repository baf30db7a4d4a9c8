// Package translate rewrites a virtual cluster's datastore records while they are
// restored onto another host, host namespace or virtual cluster name: what the datastore
// says about the host it ran on would be wrong on the new one.
//
// Every rule is explicit and documented on Rules; the values it touches are Kubernetes
// objects as the apiserver stores them (protobuf for built-in types, JSON for custom
// resources), decoded and re-encoded with apimachinery's serializers. A value no rule
// changes is written back byte for byte as it was captured.
package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	networkingv1beta1 "k8s.io/api/networking/v1beta1"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// MappingsPrefix is where vcluster keeps its name map (virtual object -> host object)
// in the virtual cluster's datastore: one JSON value per synced object, keyed
// /vcluster/mappings/<group/version>/<kind>/[<virtual namespace>/]<virtual name>.
const MappingsPrefix = "/vcluster/mappings/"

// DefaultPrefix is the kube-apiserver's default --etcd-prefix.
const DefaultPrefix = "/registry/"

// RootCAConfigMap is the ConfigMap every namespace gets with the control plane's CA.
const RootCAConfigMap = "kube-root-ca.crt"

// Rules say how a virtual cluster's datastore is translated for its new place. The zero
// value changes nothing. Apply the rules with Apply to every key of a restore (set
// restore.Options.Transform to Apply); Apply is not safe for concurrent use.
//
// The rules, in the order they are checked:
//
//   - Host names (FromHostNamespace/ToHostNamespace, FromName/ToName). vcluster syncs a
//     virtual object to the host under a name derived from its own:
//     <name>-x-<namespace>-x-<vcluster name> in the host namespace (a hashed short form
//     for some kinds), vcluster-<name>-x-<host namespace>-x-<vcluster name> for cluster
//     scoped ones. The virtual cluster stores those host names in two places: its name
//     map under MappingsPrefix (JSON {"Group","Version","Kind","VirtualName":{..},
//     "HostName":{"Namespace","Name"},"references":[..]}), and the annotations
//     vcluster.loft.sh/object-host-name and vcluster.loft.sh/object-host-namespace on
//     objects. Both are rewritten: the host namespace when it is FromHostNamespace, the
//     name when it is the one vcluster derives for FromName (or FromHostNamespace), so
//     the syncer on the target finds the copies it creates there. A mapping's key is
//     derived from the virtual name alone and does not change. Names vcluster did not
//     derive (objects imported from the host, mapped namespaces) are kept.
//   - Pods (ClearPodScheduling): spec.nodeName is cleared and status reset to Pending
//     (its qosClass, derived from the spec, kept): the pods are scheduled again on the
//     target's nodes; their old node, IPs and container states do not exist there (and
//     vcluster's syncer deletes a virtual pod that has started but has no host pod,
//     where it re-creates the host pod of one that has not). Finished pods (Succeeded,
//     Failed) are kept as they are: reset, they would run again.
//   - Nodes (DropNodes): Node objects (<prefix>minions/) are left out; the target's
//     nodes register themselves (vcluster syncs them from the host). What a Node owns
//     (its Lease, its CSINode) follows through the garbage collector.
//   - kube-root-ca.crt (DropRootCAConfigMaps): the ConfigMaps holding the old control
//     plane's CA are left out; the target's controller manager publishes its own CA in
//     every namespace.
//   - Service ClusterIPs (ServiceCIDR): a Service whose clusterIP or clusterIPs lie
//     outside the target ranges gets both cleared (headless and ExternalName Services
//     are left alone), so vcluster's syncer gives it the address of its new host
//     Service. What would keep the old address allocated goes too: the bitmap
//     allocator's <prefix>ranges/serviceips when its range is not a target range,
//     IPAddress objects (<prefix>ipaddresses/) outside the target ranges, and the
//     default ServiceCIDR "kubernetes" when it is not the target's; the apiserver
//     rebuilds them from its own --service-cluster-ip-range.
type Rules struct {
	// FromHostNamespace and ToHostNamespace are the host namespaces the virtual cluster
	// ran in and runs in after the restore.
	FromHostNamespace, ToHostNamespace string
	// FromName and ToName are the virtual cluster's name before and after.
	FromName, ToName string

	// ServiceCIDR is the target virtual cluster's service range (comma-separated for
	// dual stack). Empty means HostServiceCIDR: vcluster gives the virtual cluster the
	// host's range, since virtual Services take their host Service's address.
	ServiceCIDR string
	// HostServiceCIDR is the target host's service range (see DetectServiceCIDR).
	HostServiceCIDR string

	ClearPodScheduling   bool
	DropNodes            bool
	DropRootCAConfigMaps bool

	// Prefix is the apiserver's --etcd-prefix; DefaultPrefix when empty.
	Prefix string

	compiled bool
	err      error
	ranges   []netip.Prefix
	stats    Stats
}

// Stats count what the rules changed.
type Stats struct {
	HostNames     int64 `json:"hostNames"` // objects and mappings whose host names changed
	Pods          int64 `json:"pods"`
	Nodes         int64 `json:"nodes"`
	RootCAs       int64 `json:"rootCAConfigMaps"`
	Services      int64 `json:"services"`
	IPAllocations int64 `json:"ipAllocations"` // allocator state left out
	Undecodable   int64 `json:"undecodable"`   // values a rule applied to but that could not be read (kept)
}

// ForNewHost returns the rules for restoring a virtual cluster captured as fromName in
// fromNamespace as toName in toNamespace on a host whose service range is hostCIDR
// ("" leaves ClusterIPs alone): every rule on.
func ForNewHost(fromNamespace, fromName, toNamespace, toName, hostCIDR string) *Rules {
	return &Rules{FromHostNamespace: fromNamespace, ToHostNamespace: toNamespace, FromName: fromName, ToName: toName,
		HostServiceCIDR: hostCIDR, ClearPodScheduling: true, DropNodes: true, DropRootCAConfigMaps: true}
}

// Validate checks the rules and prepares them; Apply calls it.
func (r *Rules) Validate() error {
	if r.compiled {
		return r.err
	}
	r.compiled = true
	if (r.FromName == "") != (r.ToName == "") || (r.FromHostNamespace == "") != (r.ToHostNamespace == "") {
		r.err = errors.New("translate: give both the source and the target of a name or namespace (the source is recorded in the bundle's manifest when it was taken by name)")
		return r.err
	}
	if r.renames() && (r.FromName == "" || r.FromHostNamespace == "") {
		r.err = errors.New("translate: host names are derived from the virtual cluster's name and host namespace: give the source and target of both")
		return r.err
	}
	cidr := r.ServiceCIDR
	if cidr == "" {
		cidr = r.HostServiceCIDR
	}
	ranges, err := ParseCIDRs(cidr)
	if err != nil {
		r.err = fmt.Errorf("translate: target service CIDR: %w", err)
		return r.err
	}
	r.ranges = ranges
	if r.Prefix == "" {
		r.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(r.Prefix, "/") {
		r.Prefix += "/"
	}
	return nil
}

// Stats returns what Apply changed so far.
func (r *Rules) Stats() Stats { return r.stats }

// Apply translates one datastore record in place: it may replace kv.Value (never the
// slice it was given: restores reuse it) and returns keep=false for a record to leave
// out. Keys never change.
func (r *Rules) Apply(kv *bundle.KeyValue) (keep bool, err error) {
	if err := r.Validate(); err != nil {
		return false, err
	}
	key := string(kv.Key)
	if strings.HasPrefix(key, MappingsPrefix) {
		if err := r.mapping(kv); err != nil {
			// vcluster rebuilds a mapping it cannot read from the objects' annotations
			r.stats.Undecodable++
			slog.Warn("translate: not one of vcluster's name mappings; restored unchanged", "key", key, "err", err)
		}
		return true, nil
	}
	rest, ok := strings.CutPrefix(key, r.Prefix)
	if !ok {
		return true, nil
	}
	resource, path, _ := strings.Cut(rest, "/")
	var decodeFor string // the rule that needs the object decoded
	switch resource {
	case "minions":
		if r.DropNodes {
			r.stats.Nodes++
			return false, nil
		}
	case "configmaps":
		if r.DropRootCAConfigMaps && strings.HasSuffix(path, "/"+RootCAConfigMap) {
			r.stats.RootCAs++
			return false, nil
		}
	case "pods":
		if r.ClearPodScheduling {
			decodeFor = "pod"
		}
	case "services":
		if len(r.ranges) > 0 && strings.HasPrefix(path, "specs/") {
			decodeFor = "service"
		}
	case "ranges":
		if len(r.ranges) > 0 && path == "serviceips" {
			decodeFor = "service IP range"
		}
	case "ipaddresses":
		if len(r.ranges) > 0 {
			decodeFor = "IPAddress"
		}
	case "servicecidrs":
		if len(r.ranges) > 0 && path == "kubernetes" {
			decodeFor = "ServiceCIDR"
		}
	}
	if decodeFor == "" && r.renames() && bytes.Contains(kv.Value, []byte("vcluster.loft.sh/object-host-")) {
		decodeFor = "host-name annotations"
	}
	if decodeFor == "" {
		return true, nil
	}
	o, err := decode(kv.Value)
	var undecodable errUndecodable
	if errors.As(err, &undecodable) {
		r.stats.Undecodable++
		slog.Warn("translate: a rule applies to this key but its value cannot be read; restored unchanged", "key", key, "rule", decodeFor, "reason", undecodable.why)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("translate %s (%s): %w", key, decodeFor, err)
	}
	keep, changed := r.object(o)
	if !keep || !changed {
		return keep, nil
	}
	v, err := o.encode()
	if err != nil {
		return false, fmt.Errorf("translate %s (%s): %w", key, decodeFor, err)
	}
	kv.Value = v
	return true, nil
}

// object applies the rules to one decoded object.
func (r *Rules) object(o *object) (keep, changed bool) {
	switch obj := o.obj.(type) {
	case *corev1.Pod:
		if r.ClearPodScheduling && !finished(obj.Status) && (obj.Spec.NodeName != "" || !isPending(obj.Status)) {
			obj.Spec.NodeName = ""
			obj.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: obj.Status.QOSClass}
			r.stats.Pods++
			changed = true
		}
	case *corev1.Service:
		if len(r.ranges) > 0 && r.readdress(obj) {
			r.stats.Services++
			changed = true
		}
	case *corev1.RangeAllocation:
		if len(r.ranges) > 0 && !r.isTargetRange(obj.Range) {
			r.stats.IPAllocations++
			return false, false
		}
	case *networkingv1beta1.IPAddress:
		if len(r.ranges) > 0 && !r.inRanges(obj.Name) {
			r.stats.IPAllocations++
			return false, false
		}
	case *networkingv1.IPAddress:
		if len(r.ranges) > 0 && !r.inRanges(obj.Name) {
			r.stats.IPAllocations++
			return false, false
		}
	case *networkingv1beta1.ServiceCIDR:
		if len(r.ranges) > 0 && !r.sameRanges(obj.Spec.CIDRs) {
			r.stats.IPAllocations++
			return false, false
		}
	case *networkingv1.ServiceCIDR:
		if len(r.ranges) > 0 && !r.sameRanges(obj.Spec.CIDRs) {
			r.stats.IPAllocations++
			return false, false
		}
	}
	if r.renames() && r.annotations(o) {
		r.stats.HostNames++
		changed = true
	}
	return true, changed
}

// finished pods ran to completion; resetting them would run them again.
func finished(s corev1.PodStatus) bool {
	return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed
}

func isPending(s corev1.PodStatus) bool {
	return s.Phase == corev1.PodPending && len(s.Conditions) == 0 && s.HostIP == "" && s.PodIP == "" &&
		len(s.ContainerStatuses) == 0 && len(s.InitContainerStatuses) == 0 && s.StartTime == nil
}

// annotations rewrites vcluster's host-name annotations of an object.
func (r *Rules) annotations(o *object) bool {
	m, err := meta.Accessor(o.obj)
	if err != nil {
		return false
	}
	a := m.GetAnnotations()
	name, hasName := a[HostNameAnnotation]
	ns, hasNS := a[HostNamespaceAnnotation]
	if !hasName && !hasNS {
		return false
	}
	newName, newNS := r.hostName(name, m.GetName(), m.GetNamespace()), r.hostNamespace(ns)
	if newName == name && newNS == ns {
		return false
	}
	if hasName {
		a[HostNameAnnotation] = newName
	}
	if hasNS {
		a[HostNamespaceAnnotation] = newNS
	}
	m.SetAnnotations(a)
	return true
}

// readdress clears a Service's cluster IPs when any lies outside the target ranges.
func (r *Rules) readdress(s *corev1.Service) bool {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	outside := false
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone || ip == "" {
			return false
		}
		if !r.inRanges(ip) {
			outside = true
		}
	}
	if !outside {
		return false
	}
	s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
	return true
}

func (r *Rules) inRanges(ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, p := range r.ranges {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

func (r *Rules) isTargetRange(cidr string) bool {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return false
	}
	for _, t := range r.ranges {
		if t == p.Masked() {
			return true
		}
	}
	return false
}

func (r *Rules) sameRanges(cidrs []string) bool {
	if len(cidrs) != len(r.ranges) {
		return false
	}
	for _, c := range cidrs {
		if !r.isTargetRange(c) {
			return false
		}
	}
	return true
}

// ParseCIDRs parses a comma-separated list of CIDRs (one per IP family); "" is none.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.96.0.0/12: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// mapping translates one of vcluster's name-map values. Only the host names change
// (see Rules); the JSON is rewritten only when they do.
func (r *Rules) mapping(kv *bundle.KeyValue) error {
	if !r.renames() {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return err
	}
	changed, err := r.nameMapping(m)
	if err != nil {
		return err
	}
	if raw, ok := m["references"]; ok && string(raw) != "null" {
		var refs []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &refs); err != nil {
			return fmt.Errorf("references: %w", err)
		}
		refsChanged := false
		for _, ref := range refs {
			c, err := r.nameMapping(ref)
			if err != nil {
				return fmt.Errorf("reference: %w", err)
			}
			refsChanged = refsChanged || c
		}
		if refsChanged {
			if m["references"], err = json.Marshal(refs); err != nil {
				return err
			}
			changed = true
		}
	}
	if !changed {
		return nil
	}
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	kv.Value = v
	r.stats.HostNames++
	return nil
}

type namespacedName struct {
	Namespace string
	Name      string
}

// nameMapping rewrites the HostName of one of vcluster's NameMapping objects.
func (r *Rules) nameMapping(m map[string]json.RawMessage) (bool, error) {
	var virtual, host namespacedName
	if raw, ok := m["HostName"]; ok {
		if err := json.Unmarshal(raw, &host); err != nil {
			return false, fmt.Errorf("HostName: %w", err)
		}
	} else {
		return false, nil
	}
	if raw, ok := m["VirtualName"]; ok {
		if err := json.Unmarshal(raw, &virtual); err != nil {
			return false, fmt.Errorf("VirtualName: %w", err)
		}
	}
	vNamespace := virtual.Namespace
	if host.Namespace == "" {
		vNamespace = "" // a cluster-scoped host object
	}
	next := namespacedName{Namespace: r.hostNamespace(host.Namespace), Name: r.hostName(host.Name, virtual.Name, vNamespace)}
	if next == host {
		return false, nil
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return false, err
	}
	m["HostName"] = raw
	return true, nil
}
