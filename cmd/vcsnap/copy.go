package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/snapshot"
	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/volumecopy"
)

func (a *app) copyCommand() *cobra.Command {
	var o snapshot.CopyOptions
	var (
		copyVolumes bool
		handleMap   string
		ebs         volumecopy.EBSOptions
	)
	cmd := &cobra.Command{
		Use:   "copy SRC_URL DST_URL",
		Short: "Copy a bundle to another store, region or account, verifying every checksum",
		Long: `copy copies a bundle between stores. Within one S3 endpoint (and credentials profile) the
store copies the bytes itself; otherwise they stream through vcsnap and are verified as they
pass. Either way the copy becomes visible only when complete, so an interrupted copy leaves
nothing listed, and the destination is then read back and verified again. Encrypted bundles
are copied as they are, without a key. Each store URL may name its own credentials with
?profile=NAME (an AWS shared config profile), for copies between accounts.

Volume snapshots recorded in the bundle are region-bound. With --copy-volumes, the EBS
snapshots (` + volumecopy.EBSDriver + `) are copied to --volume-region-to with EC2 CopySnapshot,
tagged, waited for, and the destination bundle records the new handles and region. Snapshots
of other drivers are copied by the storage system's own means; give their new handles with
--volume-handle-map FILE (a JSON or YAML object, old handle: new handle). With new handles the
bundle's body is copied verbatim and verified, and a new manifest and trailer are written last.`,
		Example: `  vcsnap snapshot copy 's3://backups-eu/vc1/nightly?region=eu-west-1' 's3://backups-us/vc1/nightly?region=us-east-1'
  vcsnap snapshot copy 's3://backups/vc1/nightly?region=eu-west-1' 's3://backups-dr/vc1/nightly?region=us-east-1&profile=dr' \
      --copy-volumes --volume-region-to us-east-1 --kms-key-id alias/dr-ebs
  vcsnap snapshot copy file:///backups/vc1/nightly 's3://backups-dr/vc1/nightly?region=us-east-1' --volume-handle-map handles.yaml`,
		Args: exactArgs("SRC_URL", "DST_URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if copyVolumes && ebs.TargetRegion == "" {
				return usageError{fmt.Errorf("--copy-volumes needs --volume-region-to REGION (the region to copy the snapshots to)")}
			}
			if !copyVolumes && (ebs.KMSKeyID != "" || ebs.SourceRegion != "") {
				return usageError{fmt.Errorf("--kms-key-id and --volume-region-from apply to --copy-volumes")}
			}
			if copyVolumes || handleMap != "" {
				vo := volumecopy.Options{Region: ebs.TargetRegion}
				if handleMap != "" {
					m, err := volumecopy.LoadHandleMap(handleMap)
					if err != nil {
						return usageError{err}
					}
					vo.HandleMap = m
				}
				o.Volumes = func(ctx context.Context, vols []bundle.Volume) ([]bundle.Volume, error) {
					if copyVolumes {
						ebs.Bundle = args[0]
						c, err := volumecopy.NewEBSCopier(ctx, ebs)
						if err != nil {
							return nil, err
						}
						vo.EBS = c
					}
					return volumecopy.Rewrite(ctx, vols, vo)
				}
			}
			res, err := snapshot.Copy(cmd.Context(), args[0], args[1], o)
			if err != nil {
				return err
			}
			return a.emit(res, func() {
				how := "streamed"
				if res.ServerSide {
					how = "copied server-side"
				}
				fmt.Fprintf(a.stdout, "Copied %s to %s (%s): %s, %d keys, revision %d, verified at the destination, %s\n",
					res.From, res.To, how, humanBytes(res.Bytes), res.Manifest.Keys, res.Manifest.Revision, res.Duration.Round(time.Millisecond))
				if res.VolumesRewritten {
					for _, v := range res.Manifest.Volumes {
						fmt.Fprintf(a.stdout, "  volume %s\n", volumeLine(v))
					}
				}
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Overwrite, "overwrite", false, "replace an existing bundle at DST_URL")
	f.BoolVar(&o.StreamOnly, "stream", false, "stream the bytes through vcsnap even where the store could copy them itself")
	f.BoolVar(&copyVolumes, "copy-volumes", false, "copy the bundle's EBS volume snapshots to --volume-region-to with EC2 and record the new handles")
	f.StringVar(&ebs.TargetRegion, "volume-region-to", "", "region to copy volume snapshots to (and to record with mapped handles)")
	f.StringVar(&ebs.SourceRegion, "volume-region-from", "", "region of volume snapshots whose record names none")
	f.StringVar(&ebs.KMSKeyID, "kms-key-id", "", "encrypt the snapshot copies with this KMS key (ID, ARN or alias) of the target region")
	f.DurationVar(&ebs.Timeout, "volume-timeout", 6*time.Hour, "how long to wait for the snapshot copies to complete")
	f.DurationVar(&ebs.PollInterval, "volume-poll-interval", 15*time.Second, "time between checks of the snapshot copies' progress")
	f.StringVar(&handleMap, "volume-handle-map", "", "JSON or YAML file mapping old snapshot handles to new ones (snapshots copied by other means)")
	return cmd
}
