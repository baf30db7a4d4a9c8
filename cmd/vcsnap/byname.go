package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/internal/units"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/translate"
	"github.com/vcsnap/vcsnap/vcluster"
	"github.com/vcsnap/vcsnap/volumes"
)

// kubeFlags are the flags of the commands that name a virtual cluster on a host cluster.
type kubeFlags struct {
	kubeconfig string
	context    string
	namespace  string
	image      string
	pullPolicy string
	dryRun     bool
	timeout    time.Duration
	cfg        *rest.Config // set by connect
	// flagNames names the flags that chose kubeconfig and context, for errors.
	flagNames string
}

func (k *kubeFlags) add(f *pflag.FlagSet, engine bool) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "host cluster kubeconfig (default $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&k.context, "context", "", "kubeconfig context of the host cluster")
	f.StringVarP(&k.namespace, "namespace", "n", "", "host namespace of the virtual cluster (default the context's namespace)")
	f.DurationVar(&k.timeout, "timeout", time.Hour, "how long the whole operation may take")
	if engine {
		f.StringVar(&k.image, "image", "", "vcsnap image the engine Job runs (default vcsnap:<this version>)")
		f.StringVar(&k.pullPolicy, "image-pull-policy", string(corev1.PullIfNotPresent), "pull policy of the engine image: Always, IfNotPresent or Never")
		f.BoolVar(&k.dryRun, "dry-run", false, "find the virtual cluster and print every action without doing it")
	}
}

// connect opens the host cluster and settles the namespace.
func (k *kubeFlags) connect() (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		flags := k.flagNames
		if flags == "" {
			flags = "--kubeconfig and --context"
		}
		return nil, usageError{fmt.Errorf("host cluster kubeconfig: %w (pass %s)", err, flags)}
	}
	if k.namespace == "" {
		if k.namespace, _, err = cc.Namespace(); err != nil || k.namespace == "" {
			k.namespace = "default"
		}
	}
	cfg.UserAgent = "vcsnap/" + version
	k.cfg = cfg
	return kubernetes.NewForConfig(cfg)
}

func (k *kubeFlags) engineImage() string {
	if k.image != "" {
		return k.image
	}
	return "vcsnap:" + version
}

// storeEnv is the object store configuration of this process that the engine needs:
// the credentials travel in the temporary Secret, never as arguments.
func storeEnv() map[string]string {
	env := map[string]string{}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"} {
		if v := os.Getenv(k); v != "" {
			env[k] = v
		}
	}
	return env
}

// checkEngineStore refuses stores the engine pod cannot reach as this process does.
func checkEngineStore(store string) error {
	if strings.HasPrefix(store, "file://") {
		return usageError{fmt.Errorf("%s is a path on this machine, but vcsnap's engine runs in a Job on the host cluster: use an s3:// store (or --datastore from inside the cluster)", store)}
	}
	// The Job gets this shell's AWS_* keys (storeEnv), not its shared config files.
	if u, err := url.Parse(store); err == nil && u.Query().Has("profile") {
		return usageError{errors.New("the store URL names an AWS profile, but vcsnap's engine runs in a Job on the host cluster without this machine's AWS config: drop profile= and export that profile's keys as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), which the Job receives")}
	}
	return nil
}

// engineFiles collects the files the engine reads (key files, values) and rewrites
// their paths to where the engine finds them.
type engineFiles map[string][]byte

func (ef engineFiles) add(name, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	ef[name] = b
	return vcluster.SecretsMountPath + "/" + name, nil
}

// plan collects what a by-name command does, so --dry-run can print it instead.
type plan struct {
	a       *app
	dryRun  bool
	Actions []string `json:"actions"`
}

func (p *plan) step(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	p.Actions = append(p.Actions, s)
	if !p.dryRun {
		slog.Info(s)
	}
}

func (p *plan) print() error {
	return p.a.emit(map[string]any{"dryRun": true, "actions": p.Actions}, func() {
		for _, s := range p.Actions {
			for _, l := range strings.Split(s, "\n") {
				fmt.Fprintf(p.a.stdout, "[dry-run] %s\n", l)
			}
		}
	})
}

func describeVCluster(vc *vcluster.VCluster) string {
	s := fmt.Sprintf("found virtual cluster %s/%s: %s %s (replicas %d), datastore %s", vc.Namespace, vc.Name,
		vc.Workload.Kind, vc.Workload.Name, vc.Workload.Replicas, vc.Datastore.Kind)
	if vc.DataPVC != "" {
		s += ", data volume " + vc.DataPVC
	}
	if vc.Running {
		s += fmt.Sprintf(", pod %s on node %s", vc.Pod, vc.Node)
	} else {
		s += ", not running"
	}
	if vc.Workload.PausedReplicas != nil {
		s += fmt.Sprintf(", paused by vcsnap (was %d replicas)", *vc.Workload.PausedReplicas)
	}
	if vc.KubernetesVersion != "" {
		s += ", Kubernetes " + vc.KubernetesVersion
	}
	if vc.VClusterVersion != "" {
		s += ", vcluster " + vc.VClusterVersion
	}
	return s
}

// engineError is the engine's own exit code (a refused overwrite stays exit 5).
type engineError struct {
	code int
	err  error
}

func (e *engineError) Error() string { return e.err.Error() }
func (e *engineError) Unwrap() error { return e.err }

// runEngine runs the Job and relays its log.
func (a *app) runEngine(ctx context.Context, cs kubernetes.Interface, ej *vcluster.EngineJob, out any) (*vcluster.JobResult, error) {
	// The engine's log lines (its progress every few seconds, warnings) appear here as
	// they come; its JSON result on stdout is this command's output instead.
	relayed := 0
	ej.OnLog = func(line string) {
		if strings.HasPrefix(line, "time=") {
			relayed++
			fmt.Fprintf(a.stderr, "engine: %s\n", line)
		}
	}
	res, err := vcluster.RunJob(ctx, cs, ej)
	if relayed == 0 && res != nil && err == nil {
		// The pod ended before its log could be followed: relay it now.
		for _, l := range strings.Split(res.Logs, "\n") {
			ej.OnLog(l)
		}
	}
	if err != nil {
		if errors.Is(err, vcluster.ErrJobFailed) && res != nil && res.ExitCode > 0 {
			return res, &engineError{code: int(res.ExitCode), err: err}
		}
		return res, err
	}
	if out != nil {
		if err := vcluster.DecodeResult(res.Logs, out); err != nil {
			return res, fmt.Errorf("the engine Job %s succeeded but its result is unreadable: %w", res.Job, err)
		}
	}
	slog.Info("the engine Job finished", "job", res.Job, "node", res.Node, "took", res.Duration.Round(time.Millisecond))
	return res, nil
}

// ---- snapshot create NAME -n NS STORE_URL ----

// byNameCreate is `vcsnap snapshot create NAME -n NS STORE_URL`.
type byNameCreate struct {
	kf  kubeFlags
	vol volumeFlags
	// Volumes, taken before the engine runs, are written into the manifest
	// (--volumes-file); Partial marks the bundle partial.
	Volumes []bundle.Volume
	Partial bool
}

func (a *app) createByName(ctx context.Context, b *byNameCreate, o snapshot.CreateOptions, name, store string) error {
	committed := false // the bundle holding the volume records was written
	if err := checkEngineStore(store); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.kf.timeout)
	defer cancel()
	cs, err := b.kf.connect()
	if err != nil {
		return err
	}
	vc, err := vcluster.Discover(ctx, cs, b.kf.namespace, name)
	if err != nil {
		return err
	}
	p := &plan{a: a, dryRun: b.kf.dryRun}
	p.step("%s", describeVCluster(vc))
	hostCIDR, err := vcluster.HostServiceCIDR(ctx, cs, vc.Namespace)
	if err != nil {
		slog.Warn("the host's service CIDR is not recorded", "error", err)
	}
	if !vc.Running && vc.Datastore.Kind == vcluster.KindEmbeddedEtcd {
		p.step("the control plane is not running: read its etcd data directory offline")
	}

	// The volume snapshots come first: their records go into the manifest the engine writes.
	if b.vol.include {
		vols, partial, err := snapshotVolumes(ctx, b.kf.cfg, vc.Namespace, vc.Name, b.vol, b.kf.dryRun, func(s string) { p.step("%s", s) })
		if err != nil {
			return err
		}
		if !b.kf.dryRun {
			b.Volumes, b.Partial = vols, b.Partial || partial
			defer func() {
				if !committed {
					discardVolumes(ctx, b.kf.cfg, vols, b.vol.timeout)
				}
			}()
		}
	}

	// What the engine records, with secrets in files or the environment.
	files := engineFiles{}
	args := []string{"-o", "json", "--log-level", a.logLevel, "snapshot", "create",
		"--datastore", vc.Datastore.SnapshotURL,
		"--vcluster-name", vc.Name, "--vcluster-namespace", vc.Namespace}
	for flag, v := range map[string]string{
		"--kubernetes-version": firstNonEmpty(o.Source.KubernetesVersion, vc.KubernetesVersion),
		"--vcluster-version":   vc.VClusterVersion,
		"--host-service-cidr":  hostCIDR,
		"--service-cidr":       vc.ServiceCIDR,
	} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	files["vcluster-values.yaml"] = vc.ValuesYAML
	args = append(args, "--vcluster-values-file", vcluster.SecretsMountPath+"/vcluster-values.yaml")
	if b.Volumes != nil || b.Partial {
		js, err := json.Marshal(b.Volumes)
		if err != nil {
			return err
		}
		files["volumes.json"] = js
		args = append(args, "--volumes-file", vcluster.SecretsMountPath+"/volumes.json")
		if b.Partial {
			args = append(args, "--partial")
		}
	}
	if o.Overwrite {
		args = append(args, "--overwrite")
	}
	for _, k := range o.Encrypt.Keys {
		args = append(args, "--encrypt-recipient", k)
	}
	if o.Encrypt.KeysFile != "" {
		pth, err := files.add("recipients.txt", o.Encrypt.KeysFile)
		if err != nil {
			return usageError{fmt.Errorf("--encrypt-recipients-file: %w", err)}
		}
		args = append(args, "--encrypt-recipients-file", pth)
	}
	if o.Encrypt.PassphraseFile != "" {
		pth, err := files.add("passphrase.txt", o.Encrypt.PassphraseFile)
		if err != nil {
			return usageError{fmt.Errorf("--encrypt-passphrase-file: %w", err)}
		}
		args = append(args, "--encrypt-passphrase-file", pth)
	}
	if o.Encrypt.Empty() {
		slog.Warn("the bundle is not encrypted: the vcluster values inside it may hold a database password; pass --encrypt-recipient to encrypt")
	}
	args = append(args, store)
	env := storeEnv()
	if pw := firstNonEmpty(o.DatastoreOptions.Password, vc.Datastore.Password); pw != "" {
		env[open.PasswordEnv] = pw
	}
	ej, err := vc.BuildJob(vcluster.JobOptions{Operation: "snapshot", Image: b.kf.engineImage(), PullPolicy: corev1.PullPolicy(b.kf.pullPolicy),
		Args: args, Env: env, Files: files, ReadOnly: vc.Datastore.Kind != vcluster.KindSQLite, Timeout: b.kf.timeout})
	if err != nil {
		return err
	}
	p.step("%s", ej.Describe())
	if b.kf.dryRun {
		return p.print()
	}
	start := time.Now()
	var res snapshot.CreateResult
	if _, err := a.runEngine(ctx, cs, ej, &res); err != nil {
		if len(b.Volumes) > 0 {
			return fmt.Errorf("snapshot of %s/%s: %w; its volume snapshots are deleted again", vc.Namespace, vc.Name, err)
		}
		return fmt.Errorf("snapshot of %s/%s: %w", vc.Namespace, vc.Name, err)
	}
	committed = true
	res.Duration = units.Since(start)
	return a.emit(&res, func() {
		m := res.Manifest
		fmt.Fprintf(a.stdout, "Snapshot %s of virtual cluster %s/%s (%s) complete: %d keys, %d leases, %s of values in %s stored, revision %d, %s\n",
			res.URL, vc.Namespace, vc.Name, vc.Datastore.Kind, m.Keys, m.Leases, humanBytes(m.ValueBytes), humanBytes(res.Size), m.Revision, res.Duration.Round(time.Millisecond))
	})
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// ---- restore NAME -n NS STORE_URL ----

// byNameRestore is `vcsnap restore NAME -n NS STORE_URL`.
type byNameRestore struct {
	kf  kubeFlags
	vol volumeFlags
	// EngineArgs are added to the engine's restore command (before STORE_URL).
	EngineArgs []string
	// pointInTime: STORE_URL is a prefix of snapshot-watch chains, which the engine
	// resolves and verifies before it writes.
	pointInTime bool
	// target, when set, restores onto another host, namespace or name (--target-*).
	target *restoreTarget
}

// RestoreByNameResult is the outcome of a restore by name.
type RestoreByNameResult struct {
	Restore     *restore.Result  `json:"restore"`
	Translation *translate.Stats `json:"translation,omitempty"`
	VCluster    string           `json:"vcluster"`
	Datastore   string           `json:"datastore"`
	Job         string           `json:"job"`
	Duration    units.Seconds    `json:"durationSeconds"`
	// Volumes are the PVCs re-created from the bundle's volume snapshots.
	Volumes []volumes.Restored `json:"volumes,omitempty"`
}

func (a *app) restoreByName(ctx context.Context, b *byNameRestore, o restore.Options, noSafety bool, name, store string) error {
	if err := checkEngineStore(store); err != nil {
		return err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, b.kf.timeout)
	defer cancel()
	cs, err := b.kf.connect()
	if err != nil {
		return err
	}
	vc, err := vcluster.Discover(ctx, cs, b.kf.namespace, name)
	if err != nil {
		return err
	}
	p := &plan{a: a, dryRun: b.kf.dryRun}
	p.step("%s", describeVCluster(vc))
	if active, err := vcluster.ActiveEngineJobs(ctx, cs, vc); err != nil {
		return err
	} else if len(active) > 0 {
		return fmt.Errorf("another vcsnap run on %s/%s is in progress (Job %s): wait for it, or after an interrupted run use: %s",
			vc.Namespace, vc.Name, strings.Join(active, ", "), vcluster.ResumeCommand(vc.Namespace, vc.Name))
	}

	// 1. The bundle, verified before anything is touched.
	var m *bundle.Manifest
	if b.pointInTime {
		p.step("the engine finds the point in time in the chains under %s and verifies them before it writes", store)
	} else if b.kf.dryRun {
		e, err := snapshot.Describe(ctx, store)
		if err != nil {
			return err
		}
		m = e.Manifest
		p.step("verify the whole bundle %s (%d keys, revision %d, from %s %s/%s)", store, m.Keys, m.Revision, m.Source.Datastore, m.Source.VClusterNamespace, m.Source.VClusterName)
	} else {
		progress, done := a.progress()
		v, err := snapshot.Verify(ctx, store, snapshot.ReadOptions{Progress: progress, Keys: o.Keys})
		done()
		if err != nil {
			return fmt.Errorf("the bundle failed verification; the virtual cluster was not touched: %w", err)
		}
		m = v.Manifest
		p.step("verified the bundle %s: %d keys, revision %d", v.URL, m.Keys, m.Revision)
	}
	if m != nil && m.Kind != bundle.KindFull {
		return fmt.Errorf("%s is a %s bundle; restore needs a full bundle (or a point in time: --to-time, --to-revision)", store, m.Kind)
	}
	if m != nil && m.Source.VClusterName != "" && (m.Source.VClusterName != vc.Name || m.Source.VClusterNamespace != vc.Namespace) {
		slog.Warn("the bundle was taken of another virtual cluster", "bundle", m.Source.VClusterNamespace+"/"+m.Source.VClusterName, "target", vc.Namespace+"/"+vc.Name)
	}
	if b.vol.include && m == nil {
		return usageError{errors.New("--include-volumes restores the volumes of one bundle; a point in time (--to-time, --to-revision) has none: restore the volumes from the chain's full bundle")}
	}

	if b.target != nil {
		extra, desc, err := b.target.engineArgs(ctx, cs, vc, m)
		if err != nil {
			return err
		}
		p.step("%s", desc)
		b.EngineArgs = append(b.EngineArgs, extra...)
	}

	// 2. The engine Job, built before the pause so that a mistake stops nothing.
	files := engineFiles{}
	args := []string{"-o", "json", "--log-level", a.logLevel, "restore", "--force", "--datastore", vc.Datastore.RestoreURL}
	if noSafety {
		args = append(args, "--no-safety-backup")
	}
	if o.BumpRevision != restore.DefaultBumpRevision && o.BumpRevision != 0 {
		args = append(args, "--bump-revision", fmt.Sprint(o.BumpRevision))
	}
	if o.DatastoreOptions.MaxRevisionWrites != 0 {
		args = append(args, "--max-revision-writes", fmt.Sprint(o.DatastoreOptions.MaxRevisionWrites))
	}
	for i, f := range o.Keys.IdentityFiles {
		pth, err := files.add(fmt.Sprintf("identity-%d.txt", i), f)
		if err != nil {
			return usageError{fmt.Errorf("--identity-file: %w", err)}
		}
		args = append(args, "--identity-file", pth)
	}
	if o.Keys.PassphraseFile != "" {
		pth, err := files.add("passphrase.txt", o.Keys.PassphraseFile)
		if err != nil {
			return usageError{fmt.Errorf("--passphrase-file: %w", err)}
		}
		args = append(args, "--passphrase-file", pth)
	}
	args = append(args, b.EngineArgs...)
	args = append(args, store)
	env := storeEnv()
	if pw := firstNonEmpty(o.DatastoreOptions.Password, vc.Datastore.Password); pw != "" {
		env[open.PasswordEnv] = pw
	}
	ej, err := vc.BuildJob(vcluster.JobOptions{Operation: "restore", Image: b.kf.engineImage(), PullPolicy: corev1.PullPolicy(b.kf.pullPolicy),
		Args: args, Env: env, Files: files, Timeout: b.kf.timeout})
	if err != nil {
		return err
	}

	// 3. Pause, restore, resume.
	prior := vc.Workload.Replicas
	if vc.Workload.PausedReplicas != nil {
		prior = *vc.Workload.PausedReplicas
	}
	p.step("pause: annotate %s %s/%s with %s=%d, scale it to 0 and wait until its pods are gone",
		vc.Workload.Kind, vc.Namespace, vc.Workload.Name, vcluster.PausedReplicasAnnotation, prior)
	step := func(s string) { p.step("%s", s) }
	if b.kf.dryRun && b.vol.include {
		if _, err := restoreVolumes(ctx, b.kf.cfg, m, vc.Namespace, vc.Name, b.vol, true, step); err != nil {
			return err
		}
	}
	p.step("%s", ej.Describe())
	p.step("resume: scale %s %s/%s back to %d, remove the annotation, wait until ready (also when the restore fails)", vc.Workload.Kind, vc.Namespace, vc.Workload.Name, prior)
	if b.kf.dryRun {
		return p.print()
	}
	// Resume in every case, also after Ctrl-C: after a failure the engine has put the
	// old state back.
	resume := func() error {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer rcancel()
		return vcluster.Resume(rctx, cs, vc)
	}
	// The volumes' checks (names free, classes and namespace there) before anything stops.
	if b.vol.include {
		if _, err := restoreVolumes(ctx, b.kf.cfg, m, vc.Namespace, vc.Name, b.vol, true, func(string) {}); err != nil {
			return fmt.Errorf("%w; nothing was paused or restored", err)
		}
	}
	if _, err := vcluster.Pause(ctx, cs, vc); err != nil {
		if rerr := resume(); rerr != nil {
			return fmt.Errorf("%w; resuming failed too: %v", err, rerr)
		}
		return fmt.Errorf("%w; nothing was restored and the virtual cluster runs again", err)
	}
	// The volumes before the datastore: a volume that cannot come back stops the
	// restore before the datastore is touched.
	restoredVols, err := restoreVolumes(ctx, b.kf.cfg, m, vc.Namespace, vc.Name, b.vol, false, step)
	if err != nil {
		err = fmt.Errorf("restore of the volumes of %s/%s failed; the datastore was not touched: %w", vc.Namespace, vc.Name, err)
		if rerr := resume(); rerr != nil {
			return fmt.Errorf("%w; resuming failed too: %v", err, rerr)
		}
		return fmt.Errorf("%w; the virtual cluster runs again on its previous state", err)
	}
	var eng restoreOutput
	jr, runErr := a.runEngine(ctx, cs, ej, &eng)
	if runErr != nil {
		removeRestoredVolumes(ctx, cs, restoredVols)
	}
	resumeErr := resume()
	if runErr != nil {
		err := fmt.Errorf("restore of %s/%s failed; the datastore was left as it was: %w", vc.Namespace, vc.Name, runErr)
		if resumeErr != nil {
			return fmt.Errorf("%w; resuming failed too: %v", err, resumeErr)
		}
		return fmt.Errorf("%w; the virtual cluster runs again on its previous state", err)
	}
	if resumeErr != nil {
		return fmt.Errorf("the datastore of %s/%s was restored, but the virtual cluster did not come back: %w", vc.Namespace, vc.Name, resumeErr)
	}
	res := eng.Result
	if res == nil || res.Manifest == nil {
		return fmt.Errorf("the engine Job %s reported no restore result", jr.Job)
	}
	if _, q, ok := strings.Cut(store, "?"); ok && res.SafetyBackup != "" && !strings.Contains(res.SafetyBackup, "?") {
		res.SafetyBackup += "?" + q // the store's options (endpoint, region) reach it too
	}
	out := &RestoreByNameResult{Restore: res, Translation: eng.Translation, VCluster: vc.Namespace + "/" + vc.Name, Datastore: vc.Datastore.Kind, Job: jr.Job, Duration: units.Since(start), Volumes: restoredVols}
	return a.emit(out, func() {
		fmt.Fprintf(a.stdout, "Restored %s into virtual cluster %s/%s (%s): %d keys, %d leases; revision now %d (snapshot %d, before %d); running again, %s\n",
			res.URL, vc.Namespace, vc.Name, vc.Datastore.Kind, res.Manifest.Keys, res.Manifest.Leases, res.Revision, res.Manifest.Revision,
			res.PreviousRevision, out.Duration.Round(time.Millisecond))
		if st := out.Translation; st != nil {
			fmt.Fprintf(a.stdout, "Translated for the new host: %d host names, %d pods to reschedule, %d Services re-addressed; left out %d Nodes, %d kube-root-ca.crt ConfigMaps, %d stale IP allocations\n",
				st.HostNames, st.Pods, st.Services, st.Nodes, st.RootCAs, st.IPAllocations)
		}
		if res.SafetyBackup != "" {
			fmt.Fprintf(a.stdout, "Its previous %d keys are saved in %s\n", res.PreviousKeys, res.SafetyBackup)
		}
		for _, v := range out.Volumes {
			fmt.Fprintf(a.stdout, "Restored volume %s/%s from snapshot %s\n", v.Namespace, v.PVC, v.From.SnapshotHandle)
		}
	})
}

// ---- resume NAME -n NS ----

func (a *app) resumeCommand() *cobra.Command {
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "resume NAME -n NAMESPACE",
		Short: "Bring back a virtual cluster that an interrupted restore left paused",
		Long: `A restore by name scales the virtual cluster's StatefulSet or Deployment to 0 and records
its replicas in the annotation ` + vcluster.PausedReplicasAnnotation + `. If the restore is interrupted
(the machine running vcsnap died), resume first waits until an engine Job the interrupted run
left is finished (it may still be writing the datastore) and removes it, then scales the
virtual cluster back to the recorded replicas and waits until it is ready.`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), kf.timeout)
			defer cancel()
			cs, err := kf.connect()
			if err != nil {
				return err
			}
			vc, err := vcluster.Discover(ctx, cs, kf.namespace, args[0])
			if err != nil {
				return err
			}
			// An engine Job the interrupted run left may still be writing: let it finish.
			orphans, err := vcluster.FinishOrphans(ctx, cs, vc)
			if err != nil {
				return err
			}
			for _, o := range orphans {
				if o.Succeeded {
					slog.Info("the interrupted run's engine Job had finished its work", "job", o.Job)
				} else {
					slog.Warn("the interrupted run's engine Job failed (a failed restore puts the previous keys back); its log ends with:\n"+o.LogTail(20), "job", o.Job)
				}
			}
			if err := vcluster.Resume(ctx, cs, vc); err != nil {
				return err
			}
			return a.emit(map[string]any{"vcluster": vc.Namespace + "/" + vc.Name, "replicas": vc.Workload.Replicas}, func() {
				fmt.Fprintf(a.stdout, "Virtual cluster %s/%s runs with %d replica(s)\n", vc.Namespace, vc.Name, vc.Workload.Replicas)
			})
		},
	}
	kf.add(cmd.Flags(), false)
	cmd.Flags().Lookup("timeout").DefValue = "10m0s"
	kf.timeout = 10 * time.Minute
	return cmd
}

// readVolumesFile reads --volumes-file: the JSON list of volume records.
func readVolumesFile(path string) ([]bundle.Volume, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--volumes-file: %w", err)
	}
	var vols []bundle.Volume
	if err := json.Unmarshal(b, &vols); err != nil {
		return nil, fmt.Errorf("--volumes-file %s: not a JSON list of volume records: %w", path, err)
	}
	return vols, nil
}

// translateEngineArgs passes restore's translation flags on to the engine, which
// applies them while the bundle streams into the datastore.
func translateEngineArgs(t *translateFlags) []string {
	var args []string
	for _, f := range []struct{ flag, v string }{
		{"--translate-namespace", t.namespace}, {"--translate-name", t.name}, {"--target-service-cidr", t.serviceCIDR},
	} {
		if f.v != "" {
			args = append(args, f.flag, f.v)
		}
	}
	if t.newHost {
		args = append(args, "--new-host")
	}
	return args
}
