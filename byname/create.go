package byname

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/vcluster"
)

// ErrExists: --create was asked for a virtual cluster that is already there, or for a
// place that holds what another one left.
var ErrExists = errors.New("already exists")

// CreateOptions install a virtual cluster from a bundle before restoring into it.
type CreateOptions struct {
	// Chart is where the vcluster chart comes from: a directory, a .tgz, a chart
	// repository URL or an oci:// reference. The bundle records the chart's name and
	// version (its Helm release), and the values it was installed with.
	Chart string
	// ReadyTimeout bounds the wait for the new control plane (default 10 minutes).
	ReadyTimeout time.Duration
}

// createAndRestore installs the virtual cluster the bundle was taken of (its chart
// version, its values, its identity when it keeps its name and host namespace) into a
// namespace where it does not exist, waits until it runs, and restores the bundle into
// it the way Restore does. Anything it created is removed again when a step fails.
func createAndRestore(ctx context.Context, h *Host, namespace, name string, o RestoreOptions, startTime time.Time) (*RestoreResult, error) {
	if err := checkEngineStore(o.Store); err != nil {
		return nil, err
	}
	if o.pointInTime() {
		return nil, fmt.Errorf("%w: a virtual cluster is created from one full bundle, not from a point in time: restore the chain's full bundle with --create, then the point in time into it", ErrOption)
	}
	if err := h.needConfig("--create (helm)"); err != nil {
		return nil, err
	}
	cs, err := h.client()
	if err != nil {
		return nil, err
	}
	log := logger(o.Logger)
	r := &run{cs: cs, cfg: h.Config, log: log, p: &plan{dryRun: o.DryRun, log: log}}
	if _, err := vcluster.Discover(ctx, cs, namespace, name); err == nil {
		return nil, fmt.Errorf("%w: virtual cluster %s/%s: restore into it without --create", ErrExists, namespace, name)
	} else if !errors.Is(err, vcluster.ErrNotFound) {
		return nil, err
	}
	if err := leftovers(ctx, r, namespace, name); err != nil {
		return nil, err
	}
	b, err := r.verify(ctx, o)
	if err != nil {
		return nil, err
	}
	m := b.m
	chartName, version, values := "vcluster", m.Source.VClusterVersion, []byte(b.values)
	if b.identity != nil && b.identity.Release != nil {
		rel := b.identity.Release
		chartName, version, values = cmp.Or(rel.Chart, chartName), cmp.Or(rel.Version, version), rel.Values
	} else if !o.DryRun {
		r.log.Warn("the bundle records no Helm release (an older or unencrypted bundle): installing with its vcluster config as values", "version", version)
	}
	if !o.DryRun && len(values) == 0 {
		return nil, fmt.Errorf("%w: the bundle holds neither the Helm release nor the vcluster values to install it with", ErrOption)
	}
	ch, err := loadChart(o.Create.Chart, chartName, version)
	if err != nil {
		return nil, err
	}
	if version != "" && ch.Metadata.Version != version {
		r.log.Warn("the chart's version differs from the one the virtual cluster was installed with", "chart", ch.Metadata.Version, "recorded", version)
	}
	sameIdentity := m.Source.VClusterName == name && m.Source.VClusterNamespace == namespace && !o.SkipIdentity
	r.p.step("create namespace %s if it does not exist", namespace)
	if sameIdentity && len(m.Identity) > 0 {
		r.p.step("write the bundle's identity first (its certificates Secret), so the new control plane starts as the old one")
	} else if len(m.Identity) > 0 && o.SkipIdentity {
		r.p.step("leave out the bundle's identity (asked to): %s/%s gets a new one", namespace, name)
	} else if len(m.Identity) > 0 {
		r.p.step("leave out the bundle's identity: its certificates name %s/%s; %s/%s gets new ones", m.Source.VClusterNamespace, m.Source.VClusterName, namespace, name)
	}
	r.p.step("helm install %s -n %s: chart %s %s from %s with the recorded values; wait until it runs", name, namespace, ch.Name(), ch.Metadata.Version, o.Create.Chart)
	r.p.step("then restore into it: pause, restore the datastore through vcsnap's engine, resume (a failure removes everything created)")
	if o.DryRun {
		return &RestoreResult{VCluster: namespace + "/" + name, Actions: r.p.actions}, nil
	}

	created := &createdObjects{ns: namespace, name: name}
	res, err := func() (*RestoreResult, error) {
		if err := created.namespace(ctx, cs); err != nil {
			return nil, err
		}
		if sameIdentity && b.identity != nil {
			created.identity = true // leftovers() made sure none of its Secrets was there
			if _, err := vcluster.RestoreIdentity(ctx, cs, namespace, b.identity); err != nil {
				return nil, err
			}
		}
		created.release = true
		if err := helmInstall(ctx, h.Config, namespace, name, ch, values, log); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, cmp.Or(o.Create.ReadyTimeout, 10*time.Minute))
		defer cancel()
		var vc *vcluster.VCluster
		err := wait.PollUntilContextCancel(wctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
			v, err := vcluster.Discover(ctx, cs, namespace, name)
			if err != nil {
				return false, nil // its workload and config Secret appear with the install
			}
			vc = v
			return true, nil
		})
		if err == nil {
			err = vcluster.WaitReady(wctx, cs, vc, max(vc.Workload.Replicas, 1))
		}
		if err != nil {
			return nil, fmt.Errorf("the new virtual cluster %s/%s did not become ready: %w", namespace, name, err)
		}
		if vc, err = vcluster.Discover(ctx, cs, namespace, name); err != nil {
			return nil, err
		}
		r.p.step("installed and running: %s", Describe(vc))
		r.vc = vc
		return r.restore(ctx, o, b, startTime)
	}()
	if err != nil {
		if cerr := created.remove(context.WithoutCancel(ctx), r); cerr != nil {
			return nil, fmt.Errorf("%w; removing what the create made failed too: %v", err, cerr)
		}
		return nil, fmt.Errorf("%w; everything the create made was removed again", err)
	}
	res.Created = fmt.Sprintf("chart %s %s", ch.Name(), ch.Metadata.Version)
	return res, nil
}

// leftovers refuses a namespace that holds what a virtual cluster of that name leaves
// (its Helm release, certificates, config or data volume): they may be someone's, and a
// new install would take them over.
func leftovers(ctx context.Context, r *run, namespace, name string) error {
	secrets := []string{vcluster.CertsSecretName(name), vcluster.ConfigSecretName(name), "vc-" + name}
	for _, s := range secrets {
		if _, err := r.cs.CoreV1().Secrets(namespace).Get(ctx, s, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("%w: namespace %s holds Secret %s of an earlier virtual cluster %s: remove it, or restore into another namespace", ErrExists, namespace, s, name)
		}
	}
	rel, err := r.cs.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + name})
	if err != nil {
		return fmt.Errorf("list the Helm releases in %s: %w", namespace, err)
	}
	if len(rel.Items) > 0 {
		return fmt.Errorf("%w: namespace %s holds a Helm release %s (Secret %s): uninstall it, or restore into another namespace", ErrExists, namespace, name, rel.Items[0].Name)
	}
	for _, pvc := range dataPVCs(name) {
		if _, err := r.cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, pvc, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("%w: namespace %s holds PVC %s of an earlier virtual cluster %s: delete it (its data is lost), or restore into another namespace", ErrExists, namespace, pvc, name)
		}
	}
	return nil
}

func dataPVCs(name string) []string {
	return []string{"data-" + name + "-0", "data-" + name + "-etcd-0"}
}

// createdObjects tracks what a create made, to remove it after a failure.
type createdObjects struct {
	ns, name  string
	createdNS bool
	identity  bool // the identity Secrets were written
	release   bool
}

func (c *createdObjects) namespace(ctx context.Context, cs kubernetes.Interface) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns,
		Labels: map[string]string{"app.kubernetes.io/created-by": "vcsnap"}}}, metav1.CreateOptions{})
	switch {
	case err == nil:
		c.createdNS = true
	case !apierrors.IsAlreadyExists(err):
		return fmt.Errorf("create namespace %s: %w", c.ns, err)
	}
	return nil
}

// remove uninstalls the release and deletes what the virtual cluster wrote besides it
// (its certificates and kubeconfig Secrets, its data volumes), or the whole namespace
// when the create made it.
func (c *createdObjects) remove(ctx context.Context, r *run) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var errs []error
	if c.release && r.cfg != nil {
		if err := helmUninstall(r.cfg, c.ns, c.name, r.log); err != nil {
			errs = append(errs, err)
		}
	}
	if c.createdNS {
		if err := r.cs.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", c.ns, err))
		} else {
			// A run again right away must not find it Terminating.
			werr := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
				_, err := r.cs.CoreV1().Namespaces().Get(ctx, c.ns, metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
			if werr != nil {
				errs = append(errs, fmt.Errorf("namespace %s is still being deleted: %w", c.ns, werr))
			}
		}
		return errors.Join(errs...)
	}
	// Only what this run made: leftovers() refused a namespace holding any of these.
	secrets := []string{"vc-" + c.name}
	if c.identity || c.release {
		secrets = append(secrets, vcluster.CertsSecretName(c.name))
	}
	for _, s := range secrets {
		if err := r.cs.CoreV1().Secrets(c.ns).Delete(ctx, s, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete Secret %s/%s: %w", c.ns, s, err))
		}
	}
	for _, pvc := range dataPVCs(c.name) {
		if err := r.cs.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, pvc, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete PVC %s/%s: %w", c.ns, pvc, err))
		}
	}
	return errors.Join(errs...)
}
