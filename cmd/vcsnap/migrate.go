package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/datastore/open"
	"github.com/vcsnap/vcsnap/migrate"
	"github.com/vcsnap/vcsnap/restore"
)

func (a *app) migrateCommand() *cobra.Command {
	var o migrate.Options
	var noSafety bool
	cmd := &cobra.Command{
		Use:   "migrate --from URL --to URL",
		Short: "Convert a datastore into another kind (SQLite to embedded etcd, etcd to SQLite, SQLite to PostgreSQL/MySQL, ...)",
		Long: `Migrate streams every live key of one datastore into another of any kind, with restore's
rules: values and leases are kept, the target's revision ends above both the source's and the
target's previous revision plus --bump-revision, and every older revision is compacted so
clients re-list. Create revisions and versions are kept where the target is written directly
(sqlite://, mysql://, postgres://, etcd-dir://); through the etcd API (etcd://, etcds://,
unix://) every key gets a new create revision and version 1, as any write through the API does.
Nothing is staged on disk: the source's read feeds the target.

Stop the virtual control plane first (scale its StatefulSet to 0). The source and the target must
be different datastores: vcsnap asks each for its identity (etcd cluster ID, the SQLite file's
device and inode, the SQL server and database) and refuses one datastore spelt two ways before
writing anything.

With --force, the target's keys are first saved into a safety backup (--safety-backup, by default
a file under ~/.local/state/vcsnap/safety) and the command that brings them back is printed. A
failed or interrupted migration leaves the target as it was: kine SQL and etcd-dir targets are
never touched before the commit, and an etcd API target gets its saved keys put back.

Datastore URLs:
  sqlite:///data/state.db                  kine's SQLite database (vcluster's default)
  mysql://user@tcp(host:3306)/db           kine's table in MySQL/MariaDB
  postgres://user@host:5432/db?sslmode=... kine's table in PostgreSQL
  etcd://host:2379, etcds://host:2379?cacert=...&cert=...&key=..., unix:///data/kine.sock
  etcd-dir:///data/etcd[?vcluster=NAME&namespace=NS]
                                           an offline etcd data directory; with vcluster= the member
                                           is that virtual cluster's embedded etcd (NAME-0)

SQL passwords: --from-password-file / --to-password-file, else $VCSNAP_DATASTORE_PASSWORD.
--identity-file or --passphrase-file encrypt the safety backup (as restore does with the
keys of the bundle it restores); the undo command printed on failure names them.
A password inside the URL works but is warned about and never printed.`,
		Example: `  # vcluster's default SQLite datastore to its embedded etcd, offline (both on the PVC)
  vcsnap migrate --from sqlite:///data/state.db --to 'etcd-dir:///data/etcd?vcluster=vc1&namespace=team-a'
  # into a running etcd
  vcsnap migrate --from sqlite:///data/state.db --to 'etcds://vc1-etcd:2379?cacert=/data/pki/etcd/ca.crt&cert=...&key=...'
  # outgrow SQLite: to an external PostgreSQL
  vcsnap migrate --from sqlite:///data/state.db --to 'postgres://kine@db:5432/vc1?sslmode=require' --to-password-file /secrets/pg`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.From == "" || o.To == "" {
				return usageError{fmt.Errorf("--from and --to are required")}
			}
			if noSafety && o.SafetyBackup != "" {
				return usageError{fmt.Errorf("give --safety-backup or --no-safety-backup, not both")}
			}
			if noSafety && (len(o.Keys.IdentityFiles) > 0 || o.Keys.PassphraseFile != "") {
				return usageError{fmt.Errorf("--identity-file and --passphrase-file encrypt the safety backup, which --no-safety-backup turns off")}
			}
			if o.Force && !noSafety && o.SafetyBackup == "" {
				dir, err := safetyDir()
				if err != nil {
					return usageError{fmt.Errorf("%w; give --safety-backup STORE_URL (or --no-safety-backup)", err)}
				}
				o.SafetyBackup = "file://" + filepath.Join(dir, "migrate-"+time.Now().UTC().Format("20060102T150405Z"))
			}
			progress, done := a.progress()
			o.Progress = progress
			o.OnSafetyBackup = a.announceSafety("migration")
			o.Logger = slog.Default()
			res, err := migrate.Migrate(cmd.Context(), o)
			done()
			if errors.Is(err, migrate.ErrSameDatastore) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			printRollback(a.stderr, res.Kept, res.RollbackCommand, res.RemovedRollbacks)
			return a.emit(res, func() {
				fmt.Fprintf(a.stdout, "Migrated %s (%s, revision %d) to %s (%s): %d keys, %d leases, %s of values; revision now %d (target before %d), %s\n",
					res.From, res.FromKind, res.SourceRevision, res.To, res.ToKind, res.Keys, res.Leases, humanBytes(res.ValueBytes),
					res.Revision, res.PreviousRevision, res.Duration.Round(time.Millisecond))
				if res.SafetyBackup != "" {
					fmt.Fprintf(a.stdout, "The target's previous %d keys are saved in %s\n", res.PreviousKeys, res.SafetyBackup)
				}
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "source datastore URL")
	f.StringVar(&o.To, "to", "", "target datastore URL")
	f.BoolVar(&o.Force, "force", false, "replace a non-empty target (SQLite and etcd-dir targets keep the previous files for rollback)")
	f.StringVar(&o.SafetyBackup, "safety-backup", "", "with --force, first save the target's keys into a bundle at this store URL (default: a file under $XDG_STATE_HOME/vcsnap/safety, else ~/.local/state/vcsnap/safety)")
	f.BoolVar(&noSafety, "no-safety-backup", false, "with --force, do not save the target's current keys before replacing them")
	f.StringArrayVar(&o.Keys.IdentityFiles, "identity-file", nil, "encrypt the safety backup for this age identity's public key (AGE-SECRET-KEY-1... file; repeatable)")
	f.StringVar(&o.Keys.PassphraseFile, "passphrase-file", "", "encrypt the safety backup with the passphrase in this file")
	f.Int64Var(&o.BumpRevision, "bump-revision", restore.DefaultBumpRevision, "how far past max(source, target) revision the migrated revision ends")
	f.Int64Var(&o.ToOptions.MaxRevisionWrites, "max-revision-writes", 0, "most writes to spend raising an etcd API target's revision (default 2000000)")
	passwordFileFlag(f, "from-password-file", &o.FromOptions, "file holding the source's SQL password (default $"+open.PasswordEnv+")")
	passwordFileFlag(f, "to-password-file", &o.ToOptions, "file holding the target's SQL password (default $"+open.PasswordEnv+")")
	return cmd
}

// safetyDir is where migrate --force keeps its safety backups by default:
// $XDG_STATE_HOME/vcsnap/safety, else ~/.local/state/vcsnap/safety.
func safetyDir() (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no place for the default safety backup (%v)", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "vcsnap", "safety"), nil
}

// addDatastorePasswordFlag adds --datastore-password-file to a command with a datastore.
func addDatastorePasswordFlag(f *pflag.FlagSet, o *open.Options) {
	passwordFileFlag(f, "datastore-password-file", o, "file holding the SQL datastore's password (default $"+open.PasswordEnv+")")
}

// passwordFileFlag reads the password when the flag is parsed; the flag shows only the path.
func passwordFileFlag(f *pflag.FlagSet, name string, o *open.Options, usage string) {
	f.Var(&passwordFile{dst: &o.Password}, name, usage)
}

type passwordFile struct {
	path string
	dst  *string
}

func (p *passwordFile) Set(path string) error {
	pw, err := open.ReadPasswordFile(path)
	if err != nil {
		return err
	}
	p.path, *p.dst = path, pw
	return nil
}

func (p *passwordFile) String() string { return p.path }
func (p *passwordFile) Type() string   { return "file" }
