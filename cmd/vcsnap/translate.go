package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/translate"
)

// translateFlags are restore's flags for another host, host namespace or name (see
// translate.Rules); they parse into Rules.
type translateFlags struct {
	namespace, name string // FROM=TO, or TO with FROM from the bundle's manifest
	serviceCIDR     string
	newHost         bool
}

func addTranslateFlags(f *pflag.FlagSet, t *translateFlags) {
	f.StringVar(&t.namespace, "translate-namespace", "", "restore onto another host namespace: FROM=TO, or TO (FROM from the bundle); rewrites vcluster's host names (implies --new-host)")
	f.StringVar(&t.name, "translate-name", "", "restore as another virtual cluster name: FROM=TO, or TO (FROM from the bundle); rewrites vcluster's host names (implies --new-host)")
	f.StringVar(&t.serviceCIDR, "target-service-cidr", "", "the target's service CIDR(s), comma-separated: Services outside it are re-addressed (implies --new-host)")
	f.BoolVar(&t.newHost, "new-host", false, "restore onto another host: clear pods' nodeName and status, leave out Node objects and kube-root-ca.crt ConfigMaps")
}

// rules returns the translation the flags ask for, nil for none. A FROM left out is read
// from the bundle's manifest (recorded when the snapshot was taken by name).
func (t *translateFlags) rules(ctx context.Context, store string) (*translate.Rules, error) {
	if t.namespace == "" && t.name == "" && t.serviceCIDR == "" && !t.newHost {
		return nil, nil
	}
	fromNS, toNS := splitFromTo(t.namespace)
	fromName, toName := splitFromTo(t.name)
	if t.namespace != "" || t.name != "" {
		// Host names derive from both the name and the host namespace: a FROM left out
		// comes from the bundle, and a TO left out keeps the FROM.
		if fromNS == "" || fromName == "" {
			e, err := snapshot.Describe(ctx, store)
			if err != nil {
				return nil, err
			}
			if e.Manifest == nil {
				return nil, fmt.Errorf("read the bundle's manifest for the virtual cluster's namespace and name: %w", e.Err())
			}
			fromNS = cmp.Or(fromNS, e.Manifest.Source.VClusterNamespace)
			fromName = cmp.Or(fromName, e.Manifest.Source.VClusterName)
		}
		if fromNS == "" || fromName == "" {
			return nil, usageError{fmt.Errorf("the bundle does not record the virtual cluster's host namespace and name: give both as --translate-namespace FROM=TO and --translate-name FROM=TO")}
		}
		toNS, toName = cmp.Or(toNS, fromNS), cmp.Or(toName, fromName)
	}
	r := translate.ForNewHost(fromNS, fromName, toNS, toName, t.serviceCIDR)
	if err := r.Validate(); err != nil {
		return nil, usageError{err}
	}
	return r, nil
}

// splitFromTo parses FROM=TO; a bare TO leaves FROM empty (taken from the bundle).
func splitFromTo(s string) (from, to string) {
	if f, t, ok := strings.Cut(s, "="); ok {
		return f, t
	}
	return "", s
}
