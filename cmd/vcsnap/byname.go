package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/vcluster"
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
func (k *kubeFlags) connect() (*byname.Host, error) {
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
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("host cluster client: %w", err)
	}
	return &byname.Host{Config: cfg, Client: cs}, nil
}

// engine is how the engine Job runs: its log lines are relayed to stderr as they come.
func (a *app) engine(k *kubeFlags) byname.EngineOptions {
	img := k.image
	if img == "" {
		img = "vcsnap:" + version
	}
	return byname.EngineOptions{Image: img, PullPolicy: corev1.PullPolicy(k.pullPolicy), LogLevel: a.logLevel,
		OnLog: func(line string) { fmt.Fprintf(a.stderr, "engine: %s\n", line) }}
}

// printPlan prints a dry run's actions.
func (a *app) printPlan(actions []string) error {
	return a.emit(map[string]any{"dryRun": true, "actions": actions}, func() {
		for _, s := range actions {
			for _, l := range strings.Split(s, "\n") {
				fmt.Fprintf(a.stdout, "[dry-run] %s\n", l)
			}
		}
	})
}

// ---- snapshot create NAME -n NS STORE_URL ----

func (a *app) createByName(ctx context.Context, kf *kubeFlags, vf volumeFlags, includeIdentity bool, o snapshot.CreateOptions, name, store string) error {
	if err := byname.CheckStore(store); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, kf.timeout)
	defer cancel()
	h, err := kf.connect()
	if err != nil {
		return err
	}
	res, err := byname.Snapshot(ctx, h, kf.namespace, name, byname.SnapshotOptions{
		Store: store, Overwrite: o.Overwrite, Encrypt: o.Encrypt, Engine: a.engine(kf),
		DatastorePassword: o.DatastoreOptions.Password, KubernetesVersion: o.Source.KubernetesVersion,
		Volumes:         byname.VolumeOptions{Include: vf.include, AllowPartial: vf.allowPartial, Timeout: vf.timeout},
		IncludeIdentity: includeIdentity, DryRun: kf.dryRun, Logger: slog.Default(),
	})
	if err != nil {
		return err
	}
	if kf.dryRun {
		return a.printPlan(res.Actions)
	}
	vc, cr := res.VCluster, res.Create
	out := struct {
		*snapshot.CreateResult
		Identity        []bundle.IdentityItem `json:"identity,omitempty"`
		IdentityLeftOut bool                  `json:"identityLeftOut,omitempty"`
	}{cr, res.Identity, res.IdentityLeftOut}
	return a.emit(out, func() {
		m := cr.Manifest
		fmt.Fprintf(a.stdout, "Snapshot %s of virtual cluster %s/%s (%s) complete: %d keys, %d leases, %s of values in %s stored, revision %d, %s\n",
			cr.URL, vc.Namespace, vc.Name, vc.Datastore.Kind, m.Keys, m.Leases, humanBytes(m.ValueBytes), humanBytes(cr.Size), m.Revision, cr.Duration.Round(time.Millisecond))
		for _, it := range res.Identity {
			fmt.Fprintf(a.stdout, "Identity recorded: %s\n", identityLine(it))
		}
		if res.IdentityLeftOut {
			fmt.Fprintln(a.stdout, "Identity left out: the bundle is not encrypted, and the identity holds the virtual cluster's CA and service account keys (encrypt the bundle, or pass --include-identity)")
		}
	})
}

// ---- restore NAME -n NS STORE_URL ----

func (a *app) restoreByName(ctx context.Context, kf *kubeFlags, o byname.RestoreOptions, name string) error {
	if err := byname.CheckStore(o.Store); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, kf.timeout)
	defer cancel()
	h, err := kf.connect()
	if err != nil {
		return err
	}
	o.Engine, o.DryRun, o.Logger = a.engine(kf), kf.dryRun, slog.Default()
	// The display covers the verification only: the engine's own progress is relayed.
	progress, done := a.progress()
	var once sync.Once
	o.Progress, o.Verified = progress, func() { once.Do(done) }
	out, err := byname.Restore(ctx, h, kf.namespace, name, o)
	once.Do(done)
	if err != nil {
		return err
	}
	if kf.dryRun {
		return a.printPlan(out.Actions)
	}
	res := out.Restore
	return a.emit(out, func() {
		if out.Created != "" {
			fmt.Fprintf(a.stdout, "Created virtual cluster %s from %s\n", out.VCluster, out.Created)
		}
		if m := res.Manifest; m != nil {
			fmt.Fprintf(a.stdout, "Restored %s into virtual cluster %s (%s): %d keys, %d leases; revision now %d (snapshot %d, before %d); running again, %s\n",
				res.URL, out.VCluster, out.Datastore, m.Keys, m.Leases, res.Revision, m.Revision, res.PreviousRevision, out.Duration.Round(time.Millisecond))
		} else {
			fmt.Fprintf(a.stdout, "Restored %s into virtual cluster %s (%s); revision now %d (before %d); running again, %s\n",
				res.URL, out.VCluster, out.Datastore, res.Revision, res.PreviousRevision, out.Duration.Round(time.Millisecond))
		}
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
		for _, s := range out.Identity {
			if s.Previous != "" {
				fmt.Fprintf(a.stdout, "Restored the identity Secret %s (the one it replaced is kept as %s)\n", s.Name, s.Previous)
			} else {
				fmt.Fprintf(a.stdout, "Restored the identity Secret %s\n", s.Name)
			}
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
			h, err := kf.connect()
			if err != nil {
				return err
			}
			res, err := byname.Resume(ctx, h, kf.namespace, args[0], slog.Default())
			if err != nil {
				return err
			}
			vc := res.VCluster
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

// identityLine names one part of a bundle's identity, never its contents.
func identityLine(it bundle.IdentityItem) string {
	return fmt.Sprintf("%s %s (%s)", it.Kind, it.Name, it.Detail)
}
