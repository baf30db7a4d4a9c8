package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/snapshot"
)

func (a *app) copyCommand() *cobra.Command {
	var o snapshot.CopyOptions
	cmd := &cobra.Command{
		Use:   "copy SRC_URL DST_URL",
		Short: "Copy a bundle to another store, region or account, verifying every checksum",
		Long: `copy streams a bundle between stores. The bytes are verified as they pass and the copy
becomes visible only when complete and verified; the destination is then read back and verified
again. Encrypted bundles are copied as they are, without a key.`,
		Example: `  vcsnap snapshot copy s3://backups-eu/vc1/nightly?region=eu-west-1 s3://backups-us/vc1/nightly?region=us-east-1`,
		Args:    exactArgs("SRC_URL", "DST_URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := snapshot.Copy(cmd.Context(), args[0], args[1], o)
			if err != nil {
				return err
			}
			return a.emit(res, func() {
				fmt.Fprintf(a.stdout, "Copied %s to %s: %s, %d keys, revision %d, verified at the destination, %s\n",
					res.From, res.To, humanBytes(res.Bytes), res.Manifest.Keys, res.Manifest.Revision, res.Duration.Round(time.Millisecond))
			})
		},
	}
	cmd.Flags().BoolVar(&o.Overwrite, "overwrite", false, "replace an existing bundle at DST_URL")
	return cmd
}
