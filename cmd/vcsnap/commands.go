package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/byname"
	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/engine"
	"github.com/vcsnap/vcsnap/restore"
	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/snapshot/encrypt"
	"github.com/vcsnap/vcsnap/storage"
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
	cmd := groupCommand(&cobra.Command{Use: "snapshot", Short: "Create, list, describe, verify and delete snapshots"})
	cmd.AddCommand(a.createCommand(), a.listCommand(), a.describeCommand(), a.verifyCommand(), a.deleteCommand(), a.pruneCommand(), a.copyCommand(), a.watchCommand(), a.compactCommand())
	return cmd
}

func (a *app) createCommand() *cobra.Command {
	var o snapshot.CreateOptions
	var rep reportFlags
	var kf kubeFlags
	var vf volumeFlags
	var includeIdentity bool
	var valuesFile, volumesFile string
	cmd := &cobra.Command{
		Use:   "create (NAME -n NAMESPACE | --datastore URL) STORE_URL",
		Short: "Snapshot a virtual cluster, or a datastore, into a new bundle",
		Long: `With NAME, vcsnap finds the virtual cluster NAME in the host namespace (its StatefulSet or
Deployment and its config Secret vc-config-NAME), decides where its datastore is, and runs its
engine in a Job beside it (vcsnap's image, mounting the control plane's data volume). The
bundle records the vcluster values (inside the body: encrypt it), versions and host facts.
Object store credentials reach the Job through a temporary Secret. With --datastore, vcsnap
reads that datastore itself.`,
		Example: `  vcsnap snapshot create vc1 -n team-a s3://backups/vc1/nightly?region=eu-west-1
  vcsnap snapshot create vc1 -n team-a --dry-run s3://backups/vc1/nightly
  vcsnap snapshot create --datastore etcd://127.0.0.1:2379 file:///backups/vc1-2026-11-21
  vcsnap snapshot create --datastore unix:///data/kine.sock s3://backups/vc1/nightly?region=eu-west-1`,
		Args: rangeArgs("[NAME] STORE_URL", 1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				if o.Datastore != "" {
					return usageError{fmt.Errorf("give either a virtual cluster NAME or --datastore, not both")}
				}
				if err := vf.check(cmd.Flags()); err != nil {
					return err
				}
				return a.createByName(cmd.Context(), &kf, vf, includeIdentity, o, args[0], expandTime(args[1], time.Now()))
			}
			if vf.include {
				return usageError{fmt.Errorf("--include-volumes needs a virtual cluster NAME: vcsnap finds its PVCs on the host")}
			}
			if includeIdentity {
				return usageError{fmt.Errorf("--include-identity needs a virtual cluster NAME: vcsnap reads its Secrets on the host")}
			}
			if kf.dryRun {
				return usageError{fmt.Errorf("--dry-run needs a virtual cluster NAME")}
			}
			if o.Datastore == "" {
				return usageError{fmt.Errorf("name a virtual cluster (NAME -n NAMESPACE) or give --datastore (etcd://host:port, etcds://host:port?cacert=..., unix:///path/kine.sock, sqlite:///data/state.db)")}
			}
			if valuesFile != "" {
				b, err := os.ReadFile(valuesFile)
				if err != nil {
					return usageError{fmt.Errorf("--vcluster-values-file: %w", err)}
				}
				if o.Extra == nil {
					o.Extra = map[string]string{}
				}
				o.Extra[bundle.ExtraVClusterValues] = string(b)
			}
			if volumesFile != "" {
				vols, err := readVolumesFile(volumesFile)
				if err != nil {
					return usageError{err}
				}
				o.Volumes = vols
			}
			start := time.Now()
			o.Store, o.Tool = expandTime(args[0], start), a.tool()
			progress, done := a.progress()
			o.Progress = progress
			o.Logger = slog.Default()
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
	f.StringVar(&o.Source.VClusterVersion, "vcluster-version", "", "vcluster version to record in the bundle")
	f.StringVar(&o.Source.HostServiceCIDR, "host-service-cidr", "", "the host cluster's service CIDR to record in the bundle")
	f.StringVar(&o.Source.ServiceCIDR, "service-cidr", "", "the virtual cluster's service CIDR to record in the bundle")
	f.StringVar(&valuesFile, "vcluster-values-file", "", "vcluster values (config.yaml) to keep inside the bundle's (encrypted) body")
	f.StringVar(&volumesFile, "volumes-file", "", "JSON list of CSI volume snapshot records to write into the manifest")
	f.BoolVar(&o.Partial, "partial", false, "mark the bundle partial (some volumes were not captured)")
	kf.add(f, true)
	vf.addCreate(f)
	f.BoolVar(&includeIdentity, "include-identity", false, "with NAME: record the virtual cluster's identity (its PKI: CA, service account signing key) also in an unencrypted bundle; an encrypted one always carries it")
	f.StringArrayVar(&o.Encrypt.Keys, "encrypt-recipient", nil, "encrypt for this age public key (age1...); repeatable")
	f.StringVar(&o.Encrypt.KeysFile, "encrypt-recipients-file", "", "encrypt for the age public keys in this file, one per line")
	f.StringVar(&o.Encrypt.PassphraseFile, "encrypt-passphrase-file", "", "encrypt with the passphrase in this file (scrypt)")
	return cmd
}

func (a *app) listCommand() *cobra.Command {
	var chains bool
	cmd := &cobra.Command{
		Use:   "list STORE_PREFIX",
		Short: "List the bundles in a store folder, and the chains of snapshot watch (reads only their manifests)",
		Long: `list reads the manifests of the bundles in the folder STORE_PREFIX names and in the folders
below it. The prefix is a folder: s3://backups/vc1 lists s3://backups/vc1/..., never vc10's
bundles. Safety backups (a target's keys that restore --force or migrate --force saved) are
listed with the kind "safety". An object that cannot be read (permission denied, access denied,
a network error) is listed as unreadable with the reason, and the command then exits 9.`,
		Args: exactArgs("STORE_PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			entries, err := snapshot.List(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if entries == nil {
				entries = []*snapshot.Entry{}
			}
			unreadable := 0
			for _, e := range entries {
				if e.Unreadable {
					unreadable++
				}
			}
			folder := storage.FolderURL(args[0])
			fmt.Fprintf(a.stderr, "Folder %s: %d object(s) read as bundles%s\n", folder, len(entries), folderSummary(entries))
			cs, orphans := snapshot.Chains(entries)
			if chains {
				if cs == nil {
					cs = []*snapshot.Chain{}
				}
				if orphans == nil {
					orphans = []*snapshot.Entry{}
				}
				err = a.emit(map[string]any{"chains": cs, "orphans": orphans}, func() { a.printChains(cs, orphans, false) })
			} else {
				err = a.emit(entries, func() { a.printEntries(entries, cs, orphans) })
			}
			if err == nil && unreadable > 0 {
				err = fmt.Errorf("%w: %d object(s) in %s could not be read (listed above as unreadable); the list is incomplete", snapshot.ErrUnreadable, unreadable, folder)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&chains, "chains", false, "with -o json: print the chains (full bundle, deltas, revisions and times covered) instead of the bundles")
	return cmd
}

// folderSummary names the folders below the listed one that hold bundles.
func folderSummary(entries []*snapshot.Entry) string {
	seen := map[string]bool{}
	var dirs []string
	for _, e := range entries {
		d := "."
		if i := strings.LastIndex(e.URL, "/"); i >= 0 {
			d = e.URL[:i+1]
		}
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	if len(dirs) <= 1 {
		return ""
	}
	return " in " + strings.Join(dirs, ", ")
}

// printEntries prints the bundles that are no part of a chain of snapshot watch, then the
// chains.
func (a *app) printEntries(entries []*snapshot.Entry, cs []*snapshot.Chain, orphans []*snapshot.Entry) {
	inChain := map[*snapshot.Entry]bool{}
	for _, c := range cs {
		if c.ID == "" {
			continue
		}
		for _, e := range c.Bundles() {
			inChain[e] = true
		}
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCREATED\tKIND\tDATASTORE\tREVISION\tKEYS\tSIZE\tENCRYPTED\tSTATUS")
	rows := 0
	for _, e := range entries {
		if inChain[e] || (e.Manifest != nil && e.Manifest.Kind == bundle.KindDelta && !e.SafetyBackup()) {
			continue
		}
		rows++
		if e.Manifest == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\t-\t%s\n", e.Name, humanBytes(e.Size), e.Problem)
			continue
		}
		m := e.Manifest
		kind, status := string(m.Kind), "complete"
		if e.SafetyBackup() {
			kind = "safety"
		}
		if m.Partial {
			status = "partial"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", e.Name, m.Created.Format(time.RFC3339), kind,
			m.Source.Datastore, m.Revision, m.Keys, humanBytes(e.Size), m.Encryption.String(), status)
	}
	tw.Flush()
	a.printChains(cs, orphans, rows > 0)
}

// printChains shows each chain of snapshot watch as one line: its full bundle, how many
// deltas continue it, and the revisions and times it covers.
func (a *app) printChains(cs []*snapshot.Chain, orphans []*snapshot.Entry, gap bool) {
	n := 0
	for _, c := range cs {
		if c.ID != "" {
			n++
		}
	}
	if n == 0 && len(orphans) == 0 {
		return
	}
	if gap {
		fmt.Fprintln(a.stdout)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHAIN\tFULL BUNDLE\tDELTAS\tREVISIONS\tFROM\tTO\tSIZE\tSTATUS")
	for _, c := range cs {
		if c.ID == "" {
			continue
		}
		var size int64
		for _, e := range c.Bundles() {
			size += e.Size
		}
		status := "complete"
		if c.Gap != nil {
			status = "gap after it: " + c.Gap.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d-%d\t%s\t%s\t%s\t%s\n", c.ID, c.Full.Name, len(c.Deltas), c.FromRevision, c.ToRevision,
			c.From.Format(time.RFC3339), c.To.Format(time.RFC3339), humanBytes(size), status)
	}
	for _, o := range orphans {
		fmt.Fprintf(tw, "%s\t-\t%s\t%d-%d\t%s\t-\t%s\tno full bundle reaches it\n", o.Manifest.Chain, o.Name,
			o.Manifest.BaseRevision+1, o.Manifest.Revision, o.Manifest.Created.Format(time.RFC3339), humanBytes(o.Size))
	}
	tw.Flush()
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
	row("Encrypted", m.Encryption.String())
	if m.IsSafetyBackup() {
		row("Purpose", "safety backup: a target's keys saved before vcsnap replaced them (not a snapshot of a source)")
	}
	if m.Source.Prefix != "" {
		row("Key prefix", m.Source.Prefix+" (only keys under it were captured)")
	}
	row("Partial", m.Partial)
	row("Written by", m.Tool)
	if m.Source.HostServiceCIDR != "" {
		row("Host service CIDR", m.Source.HostServiceCIDR)
	}
	for _, v := range m.Volumes {
		row("Volume", volumeLine(v))
	}
	for _, it := range m.Identity {
		row("Identity", identityLine(it))
	}
	tw.Flush()
}

// volumeLine says where a volume's snapshot is, for describe and copy.
func volumeLine(v bundle.Volume) string {
	if v.Error != "" {
		return fmt.Sprintf("%s/%s: not captured (%s)", v.Namespace, v.PVC, v.Error)
	}
	where := ""
	if v.Region != "" {
		where = " in " + v.Region
	}
	return fmt.Sprintf("%s/%s: %s snapshot %s%s, %s", v.Namespace, v.PVC, v.Driver, v.SnapshotHandle, where, humanBytes(v.RestoreSize))
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
	var dv deleteVolumeFlags
	var do snapshot.DeleteOptions
	cmd := &cobra.Command{
		Use:   "delete URL",
		Short: "Delete a bundle (with --include-volumes also its CSI volume snapshots)",
		Long: `Delete removes a bundle from its store. The CSI volume snapshots a bundle records live on
the host's storage, not in the store: --include-volumes deletes them first, through the host
cluster (--kubeconfig, --context), and keeps the bundle if that fails.`,
		Args: exactArgs("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := dv.check(cmd.Flags()); err != nil {
				return err
			}
			if err := a.deleteBundleVolumes(cmd.Context(), &dv, args[0]); err != nil {
				return err
			}
			if err := snapshot.Delete(cmd.Context(), args[0], do); err != nil {
				if errors.Is(err, snapshot.ErrBreaksChain) {
					return fmt.Errorf("%w; --break-chain deletes it anyway", err)
				}
				return err
			}
			return a.emit(map[string]string{"deleted": args[0]}, func() { fmt.Fprintf(a.stdout, "Deleted %s\n", args[0]) })
		},
	}
	dv.add(cmd.Flags())
	cmd.Flags().BoolVar(&do.BreakChain, "break-chain", false, "delete a delta that later deltas of its chain continue (point-in-time restores past it then fail)")
	return cmd
}

func (a *app) restoreCommand() *cobra.Command {
	var o restore.Options
	var noSafety bool
	var kf kubeFlags
	var vf volumeFlags
	var noIdentity, create bool
	var chartSrc string
	var toTime string
	var tf translate.Spec
	var tg targetFlags
	cmd := &cobra.Command{
		Use:   "restore (NAME -n NAMESPACE | --datastore URL) STORE_URL",
		Short: "Restore a bundle into a virtual cluster or a datastore",
		Long: `Restore verifies the whole bundle before touching the target, then writes it, raises the
target's revision above both the snapshot's and the target's previous revision, and compacts,
so clients holding old resourceVersions re-list instead of missing events. A failed restore
puts the target's previous keys back.

With NAME, vcsnap finds the virtual cluster NAME in the host namespace, verifies the bundle,
pauses the control plane (scales it to 0, recording its replicas in the annotation
` + "vcsnap.io/paused-replicas" + `), restores its datastore through a Job beside it (the target's keys
are first saved as <bundle>.pre-restore-<time>), resumes it and waits until it is ready. A
failed restore resumes the old state. If vcsnap itself is interrupted, bring the virtual
cluster back with: vcsnap resume NAME -n NAMESPACE.

With --datastore, stop the virtual control plane first.`,
		Example: `  vcsnap restore vc1 -n team-a s3://backups/vc1/nightly-20261121T020000Z?region=eu-west-1
  vcsnap restore vc1 -n team-a --dry-run s3://backups/vc1/nightly-20261121T020000Z
  vcsnap restore vc1 -n team-a --target-kubeconfig eu-west.kubeconfig --target-namespace team-b \
    --target-name vc2 s3://backups/vc1/nightly-20261121T020000Z
  vcsnap restore --datastore etcd://127.0.0.1:2379 file:///backups/vc1-2026-11-21
  vcsnap restore --datastore sqlite:///data/state.db --translate-namespace team-a=team-b \
    --translate-name vc1=vc2 --target-service-cidr 10.128.0.0/12 file:///backups/vc1-2026-11-21
  vcsnap restore --datastore sqlite:///data/state.db --to-time 2026-11-21T10:42:00Z s3://backups/vc1/pitr/
  vcsnap restore --datastore etcd://127.0.0.1:2379 --to-revision 48211 file:///backups/vc1/`,
		Args: rangeArgs("[NAME] STORE_URL", 1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if toTime != "" {
				t, err := parseToTime(toTime)
				if err != nil {
					return err
				}
				o.To.Time = t
			}
			if o.To.Revision < 0 || (o.To.Revision > 0 && toTime != "") {
				return usageError{fmt.Errorf("give --to-revision (positive) or --to-time, not both")}
			}
			pit := o.To.Revision > 0 || toTime != ""
			if o.UpToLastGood && !pit {
				return usageError{fmt.Errorf("--up-to-last-good goes with --to-revision or --to-time")}
			}
			if len(args) == 2 {
				if o.Datastore != "" {
					return usageError{fmt.Errorf("give either a virtual cluster NAME or --datastore, not both")}
				}
				if err := vf.check(cmd.Flags()); err != nil {
					return err
				}
				bo := byname.RestoreOptions{Store: args[1], Keys: o.Keys, NoSafetyBackup: noSafety, SkipIdentity: noIdentity, ToRevision: o.To.Revision,
					UpToLastGood: o.UpToLastGood, MaxRevisionWrites: o.DatastoreOptions.MaxRevisionWrites, DatastorePassword: o.DatastoreOptions.Password}
				if o.BumpRevision != restore.DefaultBumpRevision {
					bo.BumpRevision = o.BumpRevision
				}
				bo.ToTime = o.To.Time
				var err error
				if bo.Volumes, err = vf.restoreOptions(); err != nil {
					return err
				}
				if create {
					bo.Create = &byname.CreateOptions{Chart: chartSrc}
				} else if chartSrc != "" {
					return usageError{fmt.Errorf("--chart goes with --create")}
				}
				name, err := retarget(&kf, &bo, &tg, &tf, args[0])
				if err != nil {
					return err
				}
				return a.restoreByName(cmd.Context(), &kf, bo, name)
			}
			if tg.set() {
				return usageError{fmt.Errorf("--target-* go with a virtual cluster NAME; with --datastore use --translate-namespace, --translate-name, --target-service-cidr")}
			}
			if vf.include {
				return usageError{fmt.Errorf("--include-volumes needs a virtual cluster NAME: vcsnap re-creates its PVCs on the host")}
			}
			if noIdentity {
				return usageError{fmt.Errorf("--no-identity needs a virtual cluster NAME: with --datastore no identity is restored")}
			}
			if create || chartSrc != "" {
				return usageError{fmt.Errorf("--create and --chart need a virtual cluster NAME")}
			}
			if kf.dryRun {
				return usageError{fmt.Errorf("--dry-run needs a virtual cluster NAME")}
			}
			if o.Datastore == "" {
				return usageError{fmt.Errorf("name a virtual cluster (NAME -n NAMESPACE) or give --datastore")}
			}
			o.Store = args[0]
			rules, err := tf.Rules(cmd.Context(), func(ctx context.Context) (string, string, error) { return engine.BundleSource(ctx, o.Store) })
			if err != nil {
				return err
			}
			if rules != nil {
				o.Transform = rules.Apply
			}
			if o.Force && !noSafety {
				o.SafetyBackup = restore.SafetyBackupURL(o.Store, pit, time.Now())
			}
			progress, done := a.progress()
			o.Progress = progress
			o.OnSafetyBackup = a.announceSafety("restore")
			o.Logger = slog.Default()
			res, err := restore.Restore(cmd.Context(), o)
			done()
			if err != nil {
				return err
			}
			printRollback(a.stderr, res.Kept, res.RollbackCommand, res.RemovedRollbacks)
			out := restoreOutput{Result: res}
			if rules != nil {
				st := rules.Stats()
				out.Translation = &st
			}
			return a.emit(out, func() {
				fmt.Fprintf(a.stdout, "Restored %s into %s: %d keys, %d leases; revision now %d (snapshot %d, target before %d), %s\n",
					res.URL, open.Redact(o.Datastore), res.Manifest.Keys-res.DroppedKeys, res.Manifest.Leases, res.Revision,
					res.Manifest.Revision, res.PreviousRevision, res.Duration.Round(time.Millisecond))
				if p := res.Point; p != nil {
					fmt.Fprintf(a.stdout, "Point in time %s: revision %d from %s and %d delta(s), %d change(s) laid over it\n",
						p.Asked, p.Revision, p.Full, len(p.Deltas), p.Changes)
					if p.Gap != "" {
						fmt.Fprintf(a.stdout, "Stopped short of %s at the last good point, revision %d: %s\n", p.Asked, p.Revision, p.Gap)
					}
					if p.ShortBySeconds > 0 {
						fmt.Fprintf(a.stdout, "The chain ends %s before %s: this is the state captured at %s, the newest there is\n",
							(time.Duration(p.ShortBySeconds) * time.Second).Round(time.Second), p.Asked, p.Captured.Format(time.RFC3339))
					}
				}
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
	cmd.Flags().Int64Var(&o.To.Revision, "to-revision", 0, "restore the state at this revision from the chains of snapshot watch under the STORE_URL prefix")
	cmd.Flags().StringVar(&toTime, "to-time", "", "restore the newest state captured at or before this time (RFC 3339) from the chains under the prefix")
	cmd.Flags().BoolVar(&o.UpToLastGood, "up-to-last-good", false, "when the chain has a gap before the point, restore the last point before it instead of refusing")
	f := cmd.Flags()
	keyFlags(cmd, &o.Keys)
	f.BoolVar(&noSafety, "no-safety-backup", false, "with --force, do not save the target's current keys before replacing them")
	f.StringVar(&o.Datastore, "datastore", "", "datastore URL to restore into")
	addDatastorePasswordFlag(f, &o.DatastoreOptions)
	f.BoolVar(&o.Force, "force", false, "replace the keys of a non-empty target")
	f.Int64Var(&o.BumpRevision, "bump-revision", restore.DefaultBumpRevision, "how far past max(snapshot, target) revision the restored revision ends")
	f.Int64Var(&o.DatastoreOptions.MaxRevisionWrites, "max-revision-writes", 0, "most writes to spend raising an API target's revision (default 2000000)")
	kf.add(f, true)
	vf.addRestore(f)
	f.BoolVar(&create, "create", false, "with NAME: install the virtual cluster first (a host where it does not exist): its chart version and values from the bundle, its identity when it keeps its name and namespace; a failure removes what was created")
	f.StringVar(&chartSrc, "chart", "", "with --create: where the vcluster chart comes from: a directory, a .tgz, a chart repository URL or oci://...")
	f.BoolVar(&noIdentity, "no-identity", false, "with NAME: keep the virtual cluster's identity (its certificates Secret) as it is, even when the bundle carries one for it")
	addTranslateFlags(f, &tf)
	addTargetFlags(f, &tg)
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

// rangeArgs accepts between min and max arguments, with a usage error naming them.
func rangeArgs(names string, min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			return usageError{fmt.Errorf("%s needs %s, got %d argument(s)", cmd.CommandPath(), names, len(args))}
		}
		return nil
	}
}

// parseToTime parses --to-time.
func parseToTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageError{fmt.Errorf("--to-time %q: want RFC 3339, such as 2026-11-21T10:42:00Z", s)}
	}
	return t, nil
}
