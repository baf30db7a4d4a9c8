package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vcsnap/vcsnap/snapshot"
)

func (a *app) compactCommand() *cobra.Command {
	var o snapshot.CompactOptions
	cmd := &cobra.Command{
		Use:   "compact STORE_PREFIX",
		Short: "Fold the newest chain's deltas into a new full bundle (reads the store, not the datastore)",
		Long: `compact verifies the newest chain of snapshot watch under STORE_PREFIX (its newest full
bundle and every delta after it) and writes the state at its last revision as a new full
bundle of the same chain, so restores read fewer deltas and older bundles can be pruned.
The datastore is not read. An encrypted chain needs --identity-file to read it and a
recipient to encrypt the new bundle. Run it on a schedule (a CronJob) beside snapshot watch.`,
		Example: `  vcsnap snapshot compact s3://backups/vc1/pitr/?region=eu-west-1`,
		Args:    exactArgs("STORE_PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Tool = a.tool()
			res, err := snapshot.Compact(cmd.Context(), args[0], o)
			if errors.Is(err, snapshot.ErrNothingToCompact) {
				// A quiet day: a scheduled compact succeeds with nothing to do.
				return a.emit(map[string]any{"compacted": false, "reason": err.Error()}, func() {
					fmt.Fprintf(a.stdout, "Nothing to compact: %v\n", err)
				})
			}
			if err != nil {
				return err
			}
			return a.emit(res, func() {
				fmt.Fprintf(a.stdout, "Compacted chain %s: %d delta(s) folded into %s at revision %d (%d keys), %s\n",
					res.Chain, res.Folded, res.URL, res.Manifest.Revision, res.Manifest.Keys, res.Duration.Round(time.Millisecond))
			})
		},
	}
	keyFlags(cmd, &o.Keys)
	f := cmd.Flags()
	f.StringArrayVar(&o.Encrypt.Keys, "encrypt-recipient", nil, "encrypt the new bundle for this age public key (age1...); repeatable")
	f.StringVar(&o.Encrypt.KeysFile, "encrypt-recipients-file", "", "encrypt the new bundle for the age public keys in this file")
	f.StringVar(&o.Encrypt.PassphraseFile, "encrypt-passphrase-file", "", "encrypt the new bundle with the passphrase in this file (scrypt)")
	return cmd
}
