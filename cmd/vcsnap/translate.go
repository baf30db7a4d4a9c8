package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/translate"
	"github.com/vcsnap/vcsnap/vcluster"
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
				return nil, fmt.Errorf("read the bundle's manifest for the virtual cluster's namespace and name (or give them as FROM=TO): %w", err)
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

// targetFlags move a by-name restore onto another host, host namespace or name: the
// virtual cluster there (which must exist: vcsnap restores into it) gets the bundle's
// datastore translated for its place.
type targetFlags struct {
	kubeconfig, context, namespace, name string
}

func addTargetFlags(f *pflag.FlagSet, t *targetFlags) {
	f.StringVar(&t.kubeconfig, "target-kubeconfig", "", "with NAME: restore into the virtual cluster on another host cluster (its kubeconfig), translating the datastore for it")
	f.StringVar(&t.context, "target-context", "", "with --target-kubeconfig: its context")
	f.StringVar(&t.namespace, "target-namespace", "", "with NAME: restore into the virtual cluster in this host namespace instead (default -n)")
	f.StringVar(&t.name, "target-name", "", "with NAME: restore into the virtual cluster of this name instead (default NAME)")
}

func (t *targetFlags) set() bool {
	return t.kubeconfig != "" || t.context != "" || t.namespace != "" || t.name != ""
}

// restoreTarget is a by-name restore onto another place: where the bundle's virtual
// cluster was, as the command line names it (the bundle's manifest, when it records
// it, wins), and whether the target is on another host.
type restoreTarget struct {
	fromNamespace, fromName string
	anotherHost             bool
	serviceCIDR             string // --target-service-cidr, else the target's own or its host's
}

// retarget points a by-name restore of NAME at the target the flags name and returns the
// target's name. Explicit --translate-namespace/--translate-name do not mix with it.
func retarget(b *byNameRestore, t *targetFlags, tf *translateFlags, name string) (string, error) {
	if !t.set() {
		return name, nil
	}
	if tf.namespace != "" || tf.name != "" {
		return "", usageError{fmt.Errorf("--target-namespace/--target-name/--target-kubeconfig translate the datastore themselves: leave out --translate-namespace and --translate-name")}
	}
	if t.context != "" && t.kubeconfig == "" {
		return "", usageError{fmt.Errorf("--target-context goes with --target-kubeconfig")}
	}
	b.target = &restoreTarget{fromNamespace: b.kf.namespace, fromName: name, anotherHost: t.kubeconfig != "", serviceCIDR: tf.serviceCIDR}
	if t.kubeconfig != "" {
		b.kf.kubeconfig, b.kf.context = t.kubeconfig, t.context
		b.kf.flagNames = "--target-kubeconfig and --target-context"
	}
	b.kf.namespace = cmp.Or(t.namespace, b.kf.namespace)
	return cmp.Or(t.name, name), nil
}

// engineArgs are the engine's translation flags for restoring into vc, and a line for
// the plan. The source is the bundle's (m, nil for a point in time) or the command
// line's; the service range the target virtual cluster's own, else its host's.
func (rt *restoreTarget) engineArgs(ctx context.Context, cs kubernetes.Interface, vc *vcluster.VCluster, m *bundle.Manifest) ([]string, string, error) {
	fromNS, fromName := rt.fromNamespace, rt.fromName
	if m != nil && m.Source.VClusterName != "" {
		fromNS, fromName = m.Source.VClusterNamespace, m.Source.VClusterName
	}
	if fromNS == "" {
		return nil, "", usageError{fmt.Errorf("the bundle does not record the host namespace its virtual cluster ran in: give it with -n")}
	}
	if !rt.anotherHost && fromNS == vc.Namespace && fromName == vc.Name {
		return nil, "same host, namespace and name as the bundle's virtual cluster: nothing to translate", nil
	}
	cidr, how := rt.serviceCIDR, "given"
	if cidr == "" && vc.ServiceCIDR != "" {
		cidr, how = vc.ServiceCIDR, "the target virtual cluster's"
	}
	if cidr == "" {
		var err error
		if cidr, err = vcluster.HostServiceCIDR(ctx, cs, vc.Namespace); err != nil {
			return nil, "", fmt.Errorf("%w (give the target's range with --target-service-cidr)", err)
		}
		how = "detected on the target host"
	}
	args := []string{"--translate-namespace", fromNS + "=" + vc.Namespace, "--translate-name", fromName + "=" + vc.Name,
		"--target-service-cidr", cidr, "--new-host"}
	desc := fmt.Sprintf("translate the datastore of %s/%s for %s/%s: vcluster's host names, Service addresses outside %s (%s), pods rescheduled, Nodes and kube-root-ca.crt left out",
		fromNS, fromName, vc.Namespace, vc.Name, cidr, how)
	return args, desc, nil
}
