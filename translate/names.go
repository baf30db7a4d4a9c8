package translate

import (
	"crypto/sha256"
	"encoding/hex"
	"math/big"
	"strings"
)

// The annotations vcluster's syncer records on an object to name its host-side copy.
const (
	HostNameAnnotation      = "vcluster.loft.sh/object-host-name"
	HostNamespaceAnnotation = "vcluster.loft.sh/object-host-namespace"
)

// SafeConcatName joins names with "-" as vcluster's translate.SafeConcatName (v0.20 and
// later) does for host-side names: names over 63 characters are cut to 52 and end in 10
// hex digits of the whole name's sha256, so they stay valid.
func SafeConcatName(name ...string) string {
	full := strings.Join(name, "-")
	if len(full) <= 63 {
		return full
	}
	digest := sha256.Sum256([]byte(full))
	return strings.ReplaceAll(full[:52]+"-"+hex.EncodeToString(digest[:])[:10], ".-", "-")
}

// HostName is the host name vcluster's syncer gives the virtual object name in virtual
// namespace namespace (single-namespace mode): NAME-x-NAMESPACE-x-VCLUSTER.
func HostName(name, namespace, vcluster string) string {
	return SafeConcatName(name, "x", namespace, "x", vcluster)
}

// shortHostName is vcluster's short form of a namespaced host name ("v" and 13 base-36
// digits of a hash), used where a name must stay short (for example Services).
func shortHostName(name, namespace, vcluster string) string {
	digest := sha256.Sum256([]byte(strings.Join([]string{name, "x", namespace, "x", vcluster}, "-")))
	return "v" + base36(digest[:])[:13]
}

// base36 encodes bytes as vcluster's base36 package does: the big-endian number in
// digits 0-9a-z, one leading "0" per leading zero byte.
func base36(b []byte) string {
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	s := new(big.Int).SetBytes(b).Text(36)
	if s == "0" {
		s = ""
	}
	return strings.Repeat("0", zeros) + s
}

// hostName translates the host-side name of the virtual object vName (in virtual
// namespace vNamespace, "" when cluster scoped) from the source virtual cluster to the
// target. Only names vcluster derives from the virtual cluster's own name (and, for
// cluster-scoped objects, its host namespace) change; any other name (an object
// imported from the host, a mapped namespace) is kept as it is.
func (r *Rules) hostName(host, vName, vNamespace string) string {
	if host == "" || vName == "" || !r.renames() {
		return host
	}
	switch {
	case vNamespace != "" && host == HostName(vName, vNamespace, r.FromName):
		return HostName(vName, vNamespace, r.ToName)
	case vNamespace != "" && host == shortHostName(vName, vNamespace, r.FromName):
		return shortHostName(vName, vNamespace, r.ToName)
	case vNamespace == "" && host == SafeConcatName("vcluster", vName, "x", r.FromHostNamespace, "x", r.FromName):
		return SafeConcatName("vcluster", vName, "x", r.ToHostNamespace, "x", r.ToName)
	}
	return host
}

// hostNamespace translates a host namespace: the source virtual cluster's namespace
// becomes the target's; any other is kept.
func (r *Rules) hostNamespace(ns string) string {
	if ns != "" && ns == r.FromHostNamespace {
		return r.ToHostNamespace
	}
	return ns
}

// renames reports whether host-side names change at all.
func (r *Rules) renames() bool {
	return r.FromName != r.ToName || r.FromHostNamespace != r.ToHostNamespace
}
