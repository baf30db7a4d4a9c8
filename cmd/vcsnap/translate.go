package main

import (
	"cmp"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/translate"
)

// addTranslateFlags binds restore's flags for another host, host namespace or name.
func addTranslateFlags(f *pflag.FlagSet, t *translate.Spec) {
	f.StringVar(&t.Namespace, "translate-namespace", "", "restore onto another host namespace: FROM=TO, or TO (FROM from the bundle); rewrites vcluster's host names (implies --new-host)")
	f.StringVar(&t.Name, "translate-name", "", "restore as another virtual cluster name: FROM=TO, or TO (FROM from the bundle); rewrites vcluster's host names (implies --new-host)")
	f.StringVar(&t.ServiceCIDR, "target-service-cidr", "", "the target's service CIDR(s), comma-separated: Services outside it are re-addressed (implies --new-host)")
	f.BoolVar(&t.NewHost, "new-host", false, "restore onto another host: clear pods' nodeName and status, leave out Node objects and kube-root-ca.crt ConfigMaps")
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

// retarget points a by-name restore of NAME at the target the flags name and returns the
// target's name; without --target-* the translation flags apply as given. Explicit
// --translate-namespace/--translate-name do not mix with --target-*.
func retarget(kf *kubeFlags, o *byname.RestoreOptions, t *targetFlags, tf *translate.Spec, name string) (string, error) {
	if !t.set() {
		if !tf.Empty() {
			o.Translate = tf
		}
		return name, nil
	}
	if tf.Namespace != "" || tf.Name != "" {
		return "", usageError{fmt.Errorf("--target-namespace/--target-name/--target-kubeconfig translate the datastore themselves: leave out --translate-namespace and --translate-name")}
	}
	if t.context != "" && t.kubeconfig == "" {
		return "", usageError{fmt.Errorf("--target-context goes with --target-kubeconfig")}
	}
	o.From = &byname.Origin{Namespace: kf.namespace, Name: name, AnotherHost: t.kubeconfig != "", ServiceCIDR: tf.ServiceCIDR}
	if t.kubeconfig != "" {
		kf.kubeconfig, kf.context = t.kubeconfig, t.context
		kf.flagNames = "--target-kubeconfig and --target-context"
	}
	kf.namespace = cmp.Or(t.namespace, kf.namespace)
	return cmp.Or(t.name, name), nil
}
