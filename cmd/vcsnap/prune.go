package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/snapshot"
)

func (a *app) pruneCommand() *cobra.Command {
	var o snapshot.PruneOptions
	var within, safetyWithin string
	cmd := &cobra.Command{
		Use:   "prune STORE_PREFIX",
		Short: "Delete old snapshots by retention rules (never the newest verified one)",
		Long: `prune keeps a snapshot when any --keep-* rule keeps it (like restic forget) and deletes the
rest. The newest snapshot that passes a full verification is always kept. Damaged bundles are
reported and left alone.

STORE_PREFIX is a folder (s3://backups/vc1 means s3://backups/vc1/, never vc10): prune acts on the
bundles in it and in the folders below it, and prints the folder. While any object there cannot
be read (permission, access denied, network), it decides nothing and exits 9.

Safety backups (a target's keys that restore --force or migrate --force saved before replacing
them) are no snapshots: they never count for --keep-* and never as the newest verified. They are
kept unless --keep-safety-last or --keep-safety-within say otherwise.

Abandoned uploads older than --incomplete-grace are removed: vcsnap's own temporary files
(<name>.vcsnap-<digits>.part; other programs' .part files are left alone) and S3 multipart uploads
never completed under the folder.`,
		Example: `  vcsnap snapshot prune s3://backups/vc1/ --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 6
  vcsnap snapshot prune file:///backups/vc1/ --keep-within 14d --dry-run`,
		Args: exactArgs("STORE_PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if within != "" {
				d, err := parseDays(within)
				if err != nil {
					return usageError{fmt.Errorf("--keep-within: %w", err)}
				}
				o.Policy.Within = d
			}
			if safetyWithin != "" {
				d, err := parseDays(safetyWithin)
				if err != nil {
					return usageError{fmt.Errorf("--keep-safety-within: %w", err)}
				}
				o.SafetyPolicy.Within = d
			}
			if o.Policy.Empty() {
				return usageError{fmt.Errorf("give at least one --keep-* rule")}
			}
			res, err := snapshot.Prune(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			return a.emit(res, func() {
				verb := "deleted"
				if res.DryRun {
					verb = "would delete"
				}
				fmt.Fprintf(a.stdout, "Folder %s\n", res.Folder)
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "BUNDLE\tCREATED\tDECISION\tWHY")
				all := append(append(append([]snapshot.PruneDecision{}, res.Bundles...), res.SafetyBackups...), res.Incomplete...)
				for _, d := range all {
					what := verb
					if d.Keep {
						what = "keep"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.URL, d.Created.Format(time.RFC3339), what, strings.Join(d.Reasons, ", "))
				}
				tw.Flush()
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Policy.Last, "keep-last", 0, "keep the newest N snapshots")
	f.IntVar(&o.Policy.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours that have one")
	f.IntVar(&o.Policy.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days that have one")
	f.IntVar(&o.Policy.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks that have one")
	f.IntVar(&o.Policy.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months that have one")
	f.StringVar(&within, "keep-within", "", "keep every snapshot this close to the newest one (e.g. 36h, 14d)")
	f.IntVar(&o.SafetyPolicy.Last, "keep-safety-last", 0, "keep the newest N safety backups (default: keep every safety backup)")
	f.StringVar(&safetyWithin, "keep-safety-within", "", "keep safety backups this close to the newest one (e.g. 14d; default: keep every safety backup)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the decisions, delete nothing")
	f.StringVar(&o.VClusterName, "vcluster-name", "", "only bundles recorded for this virtual cluster")
	f.StringVar(&o.VClusterNamespace, "vcluster-namespace", "", "only bundles recorded for this virtual cluster namespace")
	f.DurationVar(&o.IncompleteGrace, "incomplete-grace", 24*time.Hour, "remove abandoned uploads older than this")
	keyFlags(cmd, &o.Keys.Keys)
	return cmd
}

// parseDays accepts Go durations plus a day suffix ("14d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return 0, fmt.Errorf("%q: want a duration such as 36h or 14d", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q: want a duration such as 36h or 14d", s)
	}
	return d, nil
}
