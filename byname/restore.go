package byname

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vcsnap/vcsnap/engine"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
	"github.com/vcsnap/vcsnap/translate"
	"github.com/vcsnap/vcsnap/vcluster"
	"github.com/vcsnap/vcsnap/volumes"
)

// RestoreOptions are a restore into a virtual cluster by name.
type RestoreOptions struct {
	// Store is the bundle's URL, or for a point in time the prefix of its chains.
	Store  string
	Keys   encrypt.Keys
	Engine EngineOptions
	// NoSafetyBackup skips saving the datastore's current keys beside the bundle.
	NoSafetyBackup    bool
	BumpRevision      int64
	MaxRevisionWrites int64
	// DatastorePassword overrides the one found in the vcluster's config.
	DatastorePassword string
	// Translate rewrites the datastore as stated (see translate.Spec).
	Translate *translate.Spec
	// From, when set, is the virtual cluster the bundle was taken of, as the caller
	// knows it: the datastore is translated for the target (another name, namespace or
	// host). The bundle's manifest, when it records its virtual cluster, wins.
	From *Origin
	// ToRevision or ToTime restore a point in time of the chains under Store.
	ToRevision   int64
	ToTime       time.Time
	UpToLastGood bool
	Volumes      VolumeRestoreOptions
	// SkipIdentity leaves the virtual cluster's identity as it is. Otherwise a bundle
	// that carries one (its PKI) restored into the virtual cluster it was taken of
	// brings it back, so that kubeconfigs and tokens it issued work again; the Secret it
	// replaces is kept as NAME-certs-vcsnap-previous. Into another name or host
	// namespace the identity is not restored (its certificates name the old one).
	SkipIdentity bool
	// Create installs the virtual cluster first, on a host where it does not exist.
	Create *CreateOptions
	// Progress reports the verification of the bundle before anything is touched;
	// Verified, when set, is called once that verification has ended.
	Progress snapshot.ProgressFunc
	Verified func()
	DryRun   bool
	Logger   *slog.Logger
}

// Origin is where a bundle's virtual cluster ran, for a restore into another one.
type Origin struct {
	Namespace, Name string
	// AnotherHost: the target is on another host cluster.
	AnotherHost bool
	// ServiceCIDR is the target's service range; default the target virtual cluster's
	// own, else its host's.
	ServiceCIDR string
}

func (o *RestoreOptions) pointInTime() bool { return o.ToRevision > 0 || !o.ToTime.IsZero() }

// RestoreResult is a finished (or, with DryRun, planned) restore.
type RestoreResult struct {
	Restore     *restore.Result  `json:"restore"`
	Translation *translate.Stats `json:"translation,omitempty"`
	VCluster    string           `json:"vcluster"`
	Datastore   string           `json:"datastore"`
	Job         string           `json:"job"`
	Duration    units.Seconds    `json:"durationSeconds"`
	// Volumes are the PVCs re-created from the bundle's volume snapshots.
	Volumes []volumes.Restored `json:"volumes,omitempty"`
	// Created says which chart installed the virtual cluster (Create).
	Created string `json:"created,omitempty"`
	// Identity are the identity Secrets written from the bundle.
	Identity []vcluster.RestoredSecret `json:"identity,omitempty"`
	// Actions are the steps, in order (a dry run's plan).
	Actions []string `json:"-"`
}

// Restore replaces the datastore of the virtual cluster name in namespace with a
// bundle's: it verifies the bundle, pauses the control plane, re-creates the volumes
// (when asked), restores the datastore through vcsnap's engine in a Job beside it, and
// resumes the control plane, also when a step fails (the engine then has put the old
// keys back).
func Restore(ctx context.Context, h *Host, namespace, name string, o RestoreOptions) (*RestoreResult, error) {
	startTime := time.Now()
	if o.Volumes.Include && o.pointInTime() {
		return nil, fmt.Errorf("%w: volumes are restored from one bundle; a point in time has none: restore the volumes from the chain's full bundle", ErrOption)
	}
	if o.Create != nil {
		return createAndRestore(ctx, h, namespace, name, o, startTime)
	}
	if o.Volumes.Include {
		if err := h.needConfig("restoring volumes"); err != nil {
			return nil, err
		}
	}
	r, err := start(ctx, h, namespace, name, o.Store, o.DryRun, o.Logger)
	if err != nil {
		return nil, err
	}
	vc := r.vc
	if active, err := vcluster.ActiveEngineJobs(ctx, r.cs, vc); err != nil {
		return nil, err
	} else if len(active) > 0 {
		return nil, fmt.Errorf("%w on %s/%s (Job %s): wait for it, or after an interrupted run use: %s",
			ErrBusy, vc.Namespace, vc.Name, strings.Join(active, ", "), vcluster.ResumeCommand(vc.Namespace, vc.Name))
	}

	b, err := r.verify(ctx, o)
	if err != nil {
		return nil, err
	}
	return r.restore(ctx, o, b, startTime)
}

// verified is a bundle read before anything is touched: its manifest (nil for a point
// in time, which the engine verifies) and what its body holds of the virtual cluster.
type verified struct {
	m        *bundle.Manifest
	identity *vcluster.Identity
	values   string // the vcluster values (config.yaml)
}

// verify reads the whole bundle (a dry run only its manifest) and checks it is one a
// restore can take.
func (r *run) verify(ctx context.Context, o RestoreOptions) (*verified, error) {
	p, b := r.p, &verified{}
	var err error
	switch {
	case o.pointInTime():
		p.step("the engine finds the point in time in the chains under %s and verifies them before it writes", o.Store)
	case o.DryRun:
		e, err := snapshot.Describe(ctx, o.Store)
		if err != nil {
			return nil, err
		}
		b.m = e.Manifest
		p.step("verify the whole bundle %s (%d keys, revision %d, from %s %s/%s)", o.Store, b.m.Keys, b.m.Revision, b.m.Source.Datastore, b.m.Source.VClusterNamespace, b.m.Source.VClusterName)
	default:
		// One read verifies the whole bundle and picks up what its body holds.
		loc, err := storage.Open(ctx, o.Store)
		if err != nil {
			return nil, err
		}
		var identityJSON string
		b.m, _, err = snapshot.Scan(ctx, loc, snapshot.ReadOptions{Progress: o.Progress, Keys: o.Keys}, func(rec *bundle.Record) error {
			if rec.Type == bundle.RecordMeta && rec.Meta != nil {
				identityJSON, b.values = rec.Meta.Extra[bundle.ExtraIdentity], rec.Meta.Extra[bundle.ExtraVClusterValues]
			}
			return nil
		})
		if o.Verified != nil {
			o.Verified()
		}
		if err != nil {
			return nil, fmt.Errorf("the bundle failed verification; the virtual cluster was not touched: %w", err)
		}
		p.step("verified the bundle %s: %d keys, revision %d", loc.Store.URL(loc.Name), b.m.Keys, b.m.Revision)
		if identityJSON != "" {
			b.identity = &vcluster.Identity{}
			if err := json.Unmarshal([]byte(identityJSON), b.identity); err != nil {
				return nil, fmt.Errorf("the bundle's identity record is unreadable; the virtual cluster was not touched: %w", err)
			}
		}
	}
	if b.m != nil && b.m.Kind != bundle.KindFull {
		return nil, fmt.Errorf("%w: %s is a %s bundle; a restore needs a full bundle (or a point in time)", ErrOption, o.Store, b.m.Kind)
	}
	return b, err
}

// restore pauses r.vc, restores the bundle into it and resumes it.
func (r *run) restore(ctx context.Context, o RestoreOptions, b *verified, startTime time.Time) (*RestoreResult, error) {
	vc, p, m, identity := r.vc, r.p, b.m, b.identity
	var err error
	if m != nil && m.Source.VClusterName != "" && (m.Source.VClusterName != vc.Name || m.Source.VClusterNamespace != vc.Namespace) {
		r.log.Warn("the bundle was taken of another virtual cluster", "bundle", m.Source.VClusterNamespace+"/"+m.Source.VClusterName, "target", vc.Namespace+"/"+vc.Name)
	}

	// 2. The engine Job, built before the pause so that a mistake stops nothing.
	req := &engine.RestoreRequest{
		Datastore: vc.Datastore.RestoreURL, Store: o.Store, NoSafetyBackup: o.NoSafetyBackup,
		BumpRevision: o.BumpRevision, MaxRevisionWr: o.MaxRevisionWrites, Translate: o.Translate,
		ToRevision: o.ToRevision, ToTime: o.ToTime, UpToLastGood: o.UpToLastGood,
	}
	if o.From != nil {
		spec, desc, err := r.moveSpec(ctx, o.From, m)
		if err != nil {
			return nil, err
		}
		p.step("%s", desc)
		req.Translate = spec
	}
	identity = r.identityPlan(ctx, m, identity, o)
	files := engineFiles{}
	for i, f := range o.Keys.IdentityFiles {
		pth, err := files.add(fmt.Sprintf("identity-%d.txt", i), f, "the identity file")
		if err != nil {
			return nil, err
		}
		req.Keys.IdentityFiles = append(req.Keys.IdentityFiles, pth)
	}
	if req.Keys.PassphraseFile, err = files.add("passphrase.txt", o.Keys.PassphraseFile, "the passphrase file"); err != nil {
		return nil, err
	}
	ej, err := r.buildEngine(ctx, o.Engine, &engine.Request{Restore: req}, files, cmp.Or(o.DatastorePassword, vc.Datastore.Password), false)
	if err != nil {
		return nil, err
	}

	// 3. Pause, restore, resume.
	prior := vc.Workload.Replicas
	if vc.Workload.PausedReplicas != nil {
		prior = *vc.Workload.PausedReplicas
	}
	p.step("pause: annotate %s %s/%s with %s=%d, scale it to 0 and wait until its pods are gone",
		vc.Workload.Kind, vc.Namespace, vc.Workload.Name, vcluster.PausedReplicasAnnotation, prior)
	step := func(s string) { p.step("%s", s) }
	if o.DryRun && o.Volumes.Include {
		if _, err := r.restoreVolumes(ctx, m, o.Volumes, true, step); err != nil {
			return nil, err
		}
	}
	p.step("%s", ej.Describe())
	p.step("resume: scale %s %s/%s back to %d, remove the annotation, wait until ready (also when the restore fails)", vc.Workload.Kind, vc.Namespace, vc.Workload.Name, prior)
	if o.DryRun {
		return &RestoreResult{VCluster: vc.Namespace + "/" + vc.Name, Datastore: vc.Datastore.Kind, Actions: p.actions}, nil
	}
	// Resume in every case, also after a cancellation: after a failure the engine has
	// put the old state back.
	resume := func() error {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer rcancel()
		return vcluster.Resume(rctx, r.cs, vc)
	}
	// The volumes' checks (names free, classes and namespace there) before anything stops.
	if o.Volumes.Include {
		if _, err := r.restoreVolumes(ctx, m, o.Volumes, true, func(string) {}); err != nil {
			return nil, fmt.Errorf("%w; nothing was paused or restored", err)
		}
	}
	if _, err := vcluster.Pause(ctx, r.cs, vc); err != nil {
		if rerr := resume(); rerr != nil {
			return nil, fmt.Errorf("%w; resuming failed too: %v", err, rerr)
		}
		return nil, fmt.Errorf("%w; nothing was restored and the virtual cluster runs again", err)
	}
	// The volumes before the datastore: a volume that cannot come back stops the
	// restore before the datastore is touched.
	restoredVols, err := r.restoreVolumes(ctx, m, o.Volumes, false, step)
	if err != nil {
		err = fmt.Errorf("restore of the volumes of %s/%s failed; the datastore was not touched: %w", vc.Namespace, vc.Name, err)
		if rerr := resume(); rerr != nil {
			return nil, fmt.Errorf("%w; resuming failed too: %v", err, rerr)
		}
		return nil, fmt.Errorf("%w; the virtual cluster runs again on its previous state", err)
	}
	eng, jr, runErr := r.runEngine(ctx, o.Engine, ej)
	var unread *unreadableResult
	if errors.As(runErr, &unread) {
		// The engine succeeded: the datastore holds the bundle. Keep the volumes, finish
		// the restore and say what is not known.
		r.log.Warn("the engine Job succeeded but its result is unreadable: the datastore was restored; the revision and safety backup are not known here (see the engine's log above)", "error", runErr)
		eng, runErr = &engine.Result{Restore: &restore.Result{URL: o.Store}}, nil
	}
	if jr != nil && jr.Lingering {
		// The engine may still be writing (or undoing): resuming now would start the
		// control plane on a datastore in flux. Resume waits for the engine first.
		return nil, fmt.Errorf("the engine Job %s of %s/%s did not go away in time and may still be writing its datastore: the virtual cluster stays paused; once the Job is gone bring it back with: %s (%v)",
			jr.Job, vc.Namespace, vc.Name, vcluster.ResumeCommand(vc.Namespace, vc.Name), runErr)
	}
	if runErr != nil {
		r.removeRestoredVolumes(ctx, restoredVols)
	}
	var restoredIDs []vcluster.RestoredSecret
	var idErr error
	if runErr == nil && identity != nil {
		// Before the control plane starts: the syncer copies it into its PKI then.
		restoredIDs, idErr = vcluster.RestoreIdentity(context.WithoutCancel(ctx), r.cs, vc.Namespace, identity)
	}
	resumeErr := resume()
	if idErr != nil {
		return nil, errors.Join(fmt.Errorf("the datastore of %s/%s was restored, but its identity was not: %w; run the restore again to bring the identity back", vc.Namespace, vc.Name, idErr), resumeErr)
	}
	if runErr != nil {
		err := fmt.Errorf("restore of %s/%s failed; the datastore was left as it was: %w", vc.Namespace, vc.Name, runErr)
		if resumeErr != nil {
			return nil, fmt.Errorf("%w; resuming failed too: %v", err, resumeErr)
		}
		return nil, fmt.Errorf("%w; the virtual cluster runs again on its previous state", err)
	}
	if resumeErr != nil {
		return nil, fmt.Errorf("the datastore of %s/%s was restored, but the virtual cluster did not come back: %w", vc.Namespace, vc.Name, resumeErr)
	}
	res := eng.Restore
	if res == nil {
		return nil, fmt.Errorf("the engine Job %s reported no restore result", jr.Job)
	}
	if res.Manifest == nil {
		res.Manifest = m
	}
	if res.Manifest == nil && !o.pointInTime() {
		if e, err := snapshot.Describe(ctx, res.URL); err == nil {
			res.Manifest = e.Manifest
		}
	}
	if _, q, ok := strings.Cut(o.Store, "?"); ok && res.SafetyBackup != "" && !strings.Contains(res.SafetyBackup, "?") {
		res.SafetyBackup += "?" + q // the store's options (endpoint, region) reach it too
	}
	return &RestoreResult{Restore: res, Translation: eng.Translation, VCluster: vc.Namespace + "/" + vc.Name, Datastore: vc.Datastore.Kind,
		Job: jr.Job, Duration: units.Since(startTime), Volumes: restoredVols, Identity: restoredIDs, Actions: p.actions}, nil
}

// identityPlan decides whether the bundle's identity comes back (only into the virtual
// cluster it was taken of) and says so in the plan; it returns the identity to restore.
func (r *run) identityPlan(ctx context.Context, m *bundle.Manifest, id *vcluster.Identity, o RestoreOptions) *vcluster.Identity {
	if m == nil || len(m.Identity) == 0 {
		return nil
	}
	vc := r.vc
	var names []string
	for _, it := range m.Identity {
		if it.Kind == "Secret" {
			names = append(names, it.Name)
		}
	}
	switch {
	case len(names) == 0:
		return nil
	case o.SkipIdentity:
		r.p.step("leave the identity of %s/%s as it is (asked to); the bundle's (%s) is not restored", vc.Namespace, vc.Name, strings.Join(names, ", "))
		return nil
	case m.Source.VClusterName != vc.Name || m.Source.VClusterNamespace != vc.Namespace:
		r.p.step("leave the identity of %s/%s as it is: the bundle's certificates (%s) name %s/%s", vc.Namespace, vc.Name, strings.Join(names, ", "), m.Source.VClusterNamespace, m.Source.VClusterName)
		return nil
	}
	if vc.Datastore.Kind == vcluster.KindDeployedEtcd && !o.DryRun && id != nil && !vcluster.IdentityInPlace(ctx, r.cs, vc.Namespace, id) {
		// The etcd StatefulSet mounts the same Secret and keeps running through the
		// pause: it would still trust the old CA while the control plane presents the new.
		r.p.step("leave the identity of %s/%s as it is: its deployed etcd runs on the current certificates (to bring the bundle's back, restore with --create where the virtual cluster does not exist)", vc.Namespace, vc.Name)
		return nil
	}
	r.p.step("after the datastore and before the control plane starts again: restore the identity, Secret %s (a Secret it replaces is kept as NAME%s)", strings.Join(names, ", "), vcluster.PreviousSuffix)
	if id == nil && !r.p.dryRun {
		// Listed in the manifest but not read: only a dry run does not read the body.
		r.log.Warn("the bundle lists an identity its body does not hold: it is not restored")
	}
	return id
}

// moveSpec is the translation for restoring a bundle of from (the bundle's manifest,
// when it records its virtual cluster, wins) into r.vc, and a line for the plan. The
// service range is the given one, else the target virtual cluster's own, else its host's.
func (r *run) moveSpec(ctx context.Context, from *Origin, m *bundle.Manifest) (*translate.Spec, string, error) {
	fromNS, fromName := from.Namespace, from.Name
	if m != nil && m.Source.VClusterName != "" {
		fromNS, fromName = m.Source.VClusterNamespace, m.Source.VClusterName
	}
	vc := r.vc
	if fromNS == "" {
		return nil, "", fmt.Errorf("%w: the bundle does not record the host namespace its virtual cluster ran in: name it", ErrOption)
	}
	if !from.AnotherHost && fromNS == vc.Namespace && fromName == vc.Name {
		return nil, "same host, namespace and name as the bundle's virtual cluster: nothing to translate", nil
	}
	cidr, how := from.ServiceCIDR, "given"
	if cidr == "" && vc.ServiceCIDR != "" {
		cidr, how = vc.ServiceCIDR, "the target virtual cluster's"
	}
	if cidr == "" {
		var err error
		if cidr, err = vcluster.HostServiceCIDR(ctx, r.cs, vc.Namespace); err != nil {
			return nil, "", fmt.Errorf("%w (give the target's service range)", err)
		}
		how = "detected on the target host"
	}
	spec := &translate.Spec{Namespace: fromNS + "=" + vc.Namespace, Name: fromName + "=" + vc.Name, ServiceCIDR: cidr, NewHost: true}
	desc := fmt.Sprintf("translate the datastore of %s/%s for %s/%s: vcluster's host names, Service addresses outside %s (%s), pods rescheduled, Nodes and kube-root-ca.crt left out",
		fromNS, fromName, vc.Namespace, vc.Name, cidr, how)
	return spec, desc, nil
}
