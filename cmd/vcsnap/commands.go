package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/translate"
)

func (a *app) tool() string { return "vcsnap " + version }

// emit prints v as JSON with -o json, or runs text otherwise.
func (a *app) emit(v any, text func()) error {
	if a.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text()
	return nil
}

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Create, list, describe, verify and delete snapshots"}
	cmd.AddCommand(a.createCommand(), a.listCommand(), a.describeCommand(), a.verifyCommand(), a.deleteCommand(), a.pruneCommand(), a.copyCommand())
	return cmd
}

func (a *app) createCommand() *cobra.Command {
	var o snapshot.CreateOptions
	var rep reportFlags
	cmd := &cobra.Command{
		Use:   "create --datastore URL STORE_URL",
		Short: "Snapshot a datastore into a new bundle",
		Example: `  vcsnap snapshot create --datastore etcd://127.0.0.1:2379 file:///backups/vc1-2026-11-21
  vcsnap snapshot create --datastore unix:///data/kine.sock s3://backups/vc1/nightly?region=eu-west-1`,
		Args: exactArgs("STORE_URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Datastore == "" {
				return usageError{fmt.Errorf("--datastore is required (etcd://host:port, etcds://host:port?cacert=..., unix:///path/kine.sock)")}
			}
			start := time.Now()
			o.Store, o.Tool = expandTime(args[0], start), a.tool()
			progress, done := a.progress()
			o.Progress = progress
			res, err := snapshot.Create(cmd.Context(), o)
			done()
			a.reportCreate(cmd.Context(), rep, o, res, err, time.Since(start))
			if err != nil {
				return err
			}
			if rep.summary {
				return nil // the summary line is the output
			}
			return a.emit(res, func() {
				m := res.Manifest
				fmt.Fprintf(a.stdout, "Snapshot %s complete: %d keys, %d leases, %s of values in %s stored, revision %d, %s\n",
					res.URL, m.Keys, m.Leases, humanBytes(m.ValueBytes), humanBytes(res.Size), m.Revision, res.Duration.Round(time.Millisecond))
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Datastore, "datastore", "", "datastore URL to snapshot")
	addDatastorePasswordFlag(f, &o.DatastoreOptions)
	f.BoolVar(&o.Overwrite, "overwrite", false, "replace an existing bundle at STORE_URL")
	rep.add(f)
	f.StringVar(&o.Source.VClusterName, "vcluster-name", "", "virtual cluster name to record in the bundle")
	f.StringVar(&o.Source.VClusterNamespace, "vcluster-namespace", "", "virtual cluster host namespace to record in the bundle")
	f.StringVar(&o.Source.KubernetesVersion, "kubernetes-version", "", "virtual cluster Kubernetes version to record in the bundle")
	f.StringArrayVar(&o.Encrypt.Keys, "encrypt-recipient", nil, "encrypt for this age public key (age1...); repeatable")
	f.StringVar(&o.Encrypt.KeysFile, "encrypt-recipients-file", "", "encrypt for the age public keys in this file, one per line")
	f.StringVar(&o.Encrypt.PassphraseFile, "encrypt-passphrase-file", "", "encrypt with the passphrase in this file (scrypt)")
	return cmd
}

func (a *app) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list STORE_PREFIX",
		Short: "List the bundles under a prefix (reads only their manifests)",
		Args:  exactArgs("STORE_PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := snapshot.List(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if entries == nil {
				entries = []*snapshot.Entry{}
			}
			return a.emit(entries, func() {
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tCREATED\tKIND\tDATASTORE\tREVISION\tKEYS\tSIZE\tSTATUS")
				for _, e := range entries {
					if e.Manifest == nil {
						fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\t%s\n", e.Name, humanBytes(e.Size), e.Problem)
						continue
					}
					m := e.Manifest
					status := "complete"
					if m.Partial {
						status = "partial"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Name, m.Created.Format(time.RFC3339), m.Kind,
						m.Source.Datastore, m.Revision, m.Keys, humanBytes(e.Size), status)
				}
				tw.Flush()
			})
		},
	}
}

func (a *app) describeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "describe URL",
		Short: "Show a bundle's manifest without downloading it",
		Args:  exactArgs("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := snapshot.Describe(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.emit(e, func() { a.printManifest(e.URL, e.Size, e.Manifest) })
		},
	}
}

func (a *app) printManifest(url string, size int64, m *bundle.Manifest) {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	row("URL", url)
	row("Format", fmt.Sprintf("v%d (%s)", m.Format, m.Kind))
	row("Created", m.Created.Format(time.RFC3339))
	row("Completed", m.Completed.Format(time.RFC3339))
	row("Datastore", m.Source.Datastore)
	if m.Source.VClusterName != "" {
		row("Virtual cluster", m.Source.VClusterNamespace+"/"+m.Source.VClusterName)
	}
	if m.Source.KubernetesVersion != "" {
		row("Kubernetes", m.Source.KubernetesVersion)
	}
	row("Revision", m.Revision)
	row("Keys", m.Keys)
	row("Leases", m.Leases)
	row("Values", humanBytes(m.ValueBytes))
	row("Stored size", humanBytes(size))
	enc := "no"
	if m.Encryption != nil {
		enc = fmt.Sprintf("%s, %d recipient(s)", m.Encryption.Scheme, m.Encryption.Recipients)
	}
	row("Encrypted", enc)
	row("Partial", m.Partial)
	row("Written by", m.Tool)
	tw.Flush()
}

// keyFlags adds the flags that open encrypted bundles.
func keyFlags(cmd *cobra.Command, k *encrypt.Keys) {
	cmd.Flags().StringArrayVar(&k.IdentityFiles, "identity-file", nil, "age identity file (AGE-SECRET-KEY-1...) to decrypt the bundle; repeatable")
	cmd.Flags().StringVar(&k.PassphraseFile, "passphrase-file", "", "file holding the passphrase the bundle was encrypted with")
}

func (a *app) verifyCommand() *cobra.Command {
	var keys encrypt.Keys
	cmd := &cobra.Command{
		Use:   "verify URL",
		Short: "Read a whole bundle and check every checksum",
		Args:  exactArgs("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			progress, done := a.progress()
			res, err := snapshot.Verify(cmd.Context(), args[0], snapshot.ReadOptions{Progress: progress, Keys: keys})
			done()
			if err != nil {
				return err
			}
			return a.emit(res, func() {
				fmt.Fprintf(a.stdout, "Bundle %s verified: %d keys, revision %d, %s read in %s; every checksum matches\n",
					res.URL, res.Manifest.Keys, res.Manifest.Revision, humanBytes(res.Bytes), res.Duration.Round(time.Millisecond))
			})
		},
	}
	keyFlags(cmd, &keys)
	return cmd
}

func (a *app) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete URL",
		Short: "Delete a bundle",
		Args:  exactArgs("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := snapshot.Delete(cmd.Context(), args[0]); err != nil {
				return err
			}
			return a.emit(map[string]string{"deleted": args[0]}, func() { fmt.Fprintf(a.stdout, "Deleted %s\n", args[0]) })
		},
	}
}

func (a *app) restoreCommand() *cobra.Command {
	var o restore.Options
	var noSafety bool
	var tf translateFlags
	cmd := &cobra.Command{
		Use:   "restore --datastore URL STORE_URL",
		Short: "Restore a bundle into a datastore",
		Long: `Restore verifies the whole bundle before touching the target, then writes it, raises the
target's revision above both the snapshot's and the target's previous revision, and compacts,
so clients holding old resourceVersions re-list instead of missing events. Stop the virtual
control plane first. A failed restore empties the target again.`,
		Example: `  vcsnap restore --datastore etcd://127.0.0.1:2379 file:///backups/vc1-2026-11-21
  vcsnap restore --datastore sqlite:///data/state.db --translate-namespace team-a=team-b \
    --translate-name vc1=vc2 --target-service-cidr 10.128.0.0/12 file:///backups/vc1-2026-11-21`,
		Args: exactArgs("STORE_URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Datastore == "" {
				return usageError{fmt.Errorf("--datastore is required")}
			}
			o.Store = args[0]
			rules, err := tf.rules(cmd.Context(), o.Store)
			if err != nil {
				return err
			}
			if rules != nil {
				o.Transform = rules.Apply
			}
			if o.Force && !noSafety {
				o.SafetyBackup = safetyBackupURL(o.Store, time.Now())
			}
			progress, done := a.progress()
			o.Progress = progress
			res, err := restore.Restore(cmd.Context(), o)
			done()
			if err != nil {
				return err
			}
			out := restoreOutput{Result: res}
			if rules != nil {
				st := rules.Stats()
				out.Translation = &st
			}
			return a.emit(out, func() {
				fmt.Fprintf(a.stdout, "Restored %s into %s: %d keys, %d leases; revision now %d (snapshot %d, target before %d), %s\n",
					res.URL, open.Redact(o.Datastore), res.Manifest.Keys-res.DroppedKeys, res.Manifest.Leases, res.Revision,
					res.Manifest.Revision, res.PreviousRevision, res.Duration.Round(time.Millisecond))
				if st := out.Translation; st != nil {
					fmt.Fprintf(a.stdout, "Translated for the new host: %d host names, %d pods to reschedule, %d Services re-addressed; left out %d Nodes, %d kube-root-ca.crt ConfigMaps, %d stale IP allocations\n",
						st.HostNames, st.Pods, st.Services, st.Nodes, st.RootCAs, st.IPAllocations)
				}
				if res.SafetyBackup != "" {
					fmt.Fprintf(a.stdout, "The target's previous %d keys are saved in %s\n", res.PreviousKeys, res.SafetyBackup)
				}
			})
		},
	}
	f := cmd.Flags()
	keyFlags(cmd, &o.Keys)
	f.BoolVar(&noSafety, "no-safety-backup", false, "with --force, do not save the target's current keys before replacing them")
	f.StringVar(&o.Datastore, "datastore", "", "datastore URL to restore into")
	addDatastorePasswordFlag(f, &o.DatastoreOptions)
	f.BoolVar(&o.Force, "force", false, "replace the keys of a non-empty target")
	f.Int64Var(&o.BumpRevision, "bump-revision", restore.DefaultBumpRevision, "how far past max(snapshot, target) revision the restored revision ends")
	f.Int64Var(&o.DatastoreOptions.MaxRevisionWrites, "max-revision-writes", 0, "most writes to spend raising an API target's revision (default 2000000)")
	addTranslateFlags(f, &tf)
	return cmd
}

// restoreOutput is restore's JSON output: the result and what the translation changed.
type restoreOutput struct {
	*restore.Result
	Translation *translate.Stats `json:"translation,omitempty"`
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := map[string]any{"version": version, "go": runtime.Version(), "bundleFormat": bundle.FormatVersion}
			return a.emit(v, func() {
				fmt.Fprintf(a.stdout, "vcsnap %s (bundle format v%d, %s)\n", version, bundle.FormatVersion, runtime.Version())
			})
		},
	}
}

// safetyBackupURL names the bundle that keeps a target's keys before --force replaces
// them: beside the bundle being restored, keeping the URL's options.
func safetyBackupURL(store string, now time.Time) string {
	base, query, _ := strings.Cut(store, "?")
	u := base + ".pre-restore-" + now.UTC().Format("20060102T150405Z")
	if query != "" {
		u += "?" + query
	}
	return u
}
