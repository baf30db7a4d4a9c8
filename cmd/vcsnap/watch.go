package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/snapshot"
)

func (a *app) watchCommand() *cobra.Command {
	var o snapshot.WatchOptions
	var maxMiB float64
	cmd := &cobra.Command{
		Use:   "watch --datastore URL STORE_PREFIX",
		Short: "Keep a chain of full and delta bundles current, for point-in-time restores",
		Long: `watch runs until stopped (SIGTERM or Ctrl-C stores the changes it holds, then exits 0).
It takes a full bundle, then every --delta-every cuts the changes since the previous bundle
(puts with their values, revisions and leases; deletes) into a delta bundle, and every
--full-every takes a new full bundle the chain continues from. Changes come from the watch
stream of etcd and kine endpoints, or from kine's table for sqlite://, mysql:// and
postgres:// URLs. After a restart it continues the newest chain under STORE_PREFIX when the
datastore still holds every revision after it; otherwise, or when the datastore compacted
revisions the watch had not read yet, it starts a new chain with a full bundle and logs why.
Run one watcher per prefix.`,
		Example: `  vcsnap snapshot watch --datastore sqlite:///data/state.db s3://backups/vc1/pitr/?region=eu-west-1
  vcsnap snapshot watch --datastore etcd://127.0.0.1:2379 --full-every 1h --delta-every 5s file:///backups/vc1/`,
		Args: exactArgs("STORE_PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Datastore == "" {
				return usageError{fmt.Errorf("--datastore is required")}
			}
			if o.DeltaEvery < 100*time.Millisecond || o.FullEvery < o.DeltaEvery {
				return usageError{fmt.Errorf("want --delta-every of at least 100ms and --full-every at least as long (got %s and %s)", o.DeltaEvery, o.FullEvery)}
			}
			if maxMiB <= 0 {
				return usageError{fmt.Errorf("--delta-max-mib must be positive")}
			}
			o.DeltaMaxBytes = int64(maxMiB * (1 << 20))
			o.Prefix, o.Tool = args[0], a.tool()
			o.OnBundle = func(ev snapshot.WatchEvent) {
				m := ev.Manifest
				if a.output == "json" {
					_ = json.NewEncoder(a.stdout).Encode(ev) // one line per bundle
					return
				}
				if m.Kind == "full" {
					fmt.Fprintf(a.stdout, "%s full  revision %d, %d keys (%s)\n", ev.URL, m.Revision, m.Keys, ev.Reason)
					return
				}
				slog.Info("delta", "bundle", ev.URL, "revisions", fmt.Sprintf("%d-%d", m.BaseRevision+1, m.Revision), "puts", m.Keys, "deletes", m.Deletes)
			}
			return snapshot.Watch(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Datastore, "datastore", "", "datastore URL to follow")
	addDatastorePasswordFlag(f, &o.DatastoreOptions)
	f.DurationVar(&o.FullEvery, "full-every", snapshot.DefaultFullEvery, "take a new full bundle this often")
	f.DurationVar(&o.DeltaEvery, "delta-every", snapshot.DefaultDeltaEvery, "cut a delta bundle this often")
	f.DurationVar(&o.LockTTL, "lock-ttl", snapshot.DefaultWatchLockTTL, "how long this watcher's claim on the prefix lasts without renewal (a second watcher waits for it)")
	_ = f.MarkHidden("lock-ttl")
	f.Float64Var(&maxMiB, "delta-max-mib", float64(snapshot.DefaultDeltaMaxBytes>>20), "cut a delta early when this many MiB of keys and values are pending")
	f.StringVar(&o.Source.VClusterName, "vcluster-name", "", "virtual cluster name to record in the bundles")
	f.StringVar(&o.Source.VClusterNamespace, "vcluster-namespace", "", "virtual cluster host namespace to record in the bundles")
	f.StringVar(&o.Source.KubernetesVersion, "kubernetes-version", "", "virtual cluster Kubernetes version to record in the bundles")
	f.StringArrayVar(&o.Encrypt.Keys, "encrypt-recipient", nil, "encrypt for this age public key (age1...); repeatable")
	f.StringVar(&o.Encrypt.KeysFile, "encrypt-recipients-file", "", "encrypt for the age public keys in this file, one per line")
	f.StringVar(&o.Encrypt.PassphraseFile, "encrypt-passphrase-file", "", "encrypt with the passphrase in this file (scrypt)")
	return cmd
}
