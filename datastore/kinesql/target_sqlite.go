package kinesql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vcsnap/vcsnap/datastore"
	"github.com/vcsnap/vcsnap/internal/shell"
)

// SQLiteTarget restores into a NEW kine state.db: it is built as a temporary file next to
// the target with kine's exact schema, then swapped in with one rename. The previous
// state.db and its -wal and -shm files are kept as <name>.vcsnap-old-<timestamp> for
// rollback (see RollbackCommand). Until the swap the target is untouched, so a failure
// or an Abort only removes the temporary file. Kine must be stopped; a database another
// process has open is refused.
type SQLiteTarget struct {
	cfg Config

	opts   datastore.PrepareOptions
	state  datastore.TargetState
	exists bool
	plan   revisionPlan

	tmp string
	db  *sql.DB
	tx  *sql.Tx
	w   *rowWriter

	// Set by Commit: where the previous files went.
	Stamp string
	Kept  []string
	// removed are the rollback copies of earlier restores that Commit removed.
	removed []string
}

// OpenSQLiteTarget checks that the file's directory exists.
func OpenSQLiteTarget(ctx context.Context, c Config) (*SQLiteTarget, error) {
	if c.Dialect != SQLite {
		return nil, fmt.Errorf("OpenSQLiteTarget: dialect %q", c.Dialect)
	}
	dir := filepath.Dir(c.Path)
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: the directory of %s: %v (create it first)", datastore.ErrUnavailable, c.Path, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", datastore.ErrUnavailable, dir)
	}
	if fi, err := os.Stat(c.Path); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory: name the database file, such as sqlite://%s", c.Path, filepath.Join(c.Path, "state.db"))
	}
	return &SQLiteTarget{cfg: c}, nil
}

func (t *SQLiteTarget) Kind() string { return t.cfg.Kind() }

// StagedUntilCommit: the new database is built next to the target (datastore.Staged).
func (t *SQLiteTarget) StagedUntilCommit() {}

func (t *SQLiteTarget) Close() error {
	t.cleanup()
	return nil
}

// Prepare refuses a database another process has open (kine must be stopped), reads the
// previous revision of an existing kine database, and refuses one holding data unless
// Force.
func (t *SQLiteTarget) Prepare(ctx context.Context, opts datastore.PrepareOptions) (datastore.TargetState, error) {
	t.opts = opts
	pid, err := lockHolder(t.cfg.Path)
	if err != nil {
		return t.state, fmt.Errorf("%w: %s: %v", datastore.ErrUnavailable, t.cfg.Path, err)
	}
	if pid != 0 {
		who := fmt.Sprintf("process %d", pid)
		if pid < 0 {
			who = "another process"
		}
		return t.state, fmt.Errorf("%w: %s is open in %s (kine or k3s?): stop the virtual cluster's control plane (scale its StatefulSet to 0) before restoring into it",
			datastore.ErrUnavailable, t.cfg.Path, who)
	}
	if _, err := os.Stat(t.cfg.Path); err == nil {
		t.exists = true
		src, err := OpenSource(ctx, t.cfg)
		if err == nil {
			t.state.Revision, t.state.Keys, err = inspect(ctx, src.db)
			src.Close()
			if err != nil {
				err = classify(t.cfg, err)
			}
		}
		if err != nil {
			if !opts.Force {
				return t.state, fmt.Errorf("%w: %s exists but cannot be read as a kine database (%v); pass --force to replace it (it is kept as %s.vcsnap-old-<timestamp>)",
					datastore.ErrTargetNotEmpty, t.cfg.Path, err, filepath.Base(t.cfg.Path))
			}
			slog.Warn("replacing a file that cannot be read as a kine database (--force); its previous revision is unknown", "path", t.cfg.Path, "error", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return t.state, fmt.Errorf("%w: %v", datastore.ErrUnavailable, err)
	}
	if t.state.Keys > 0 && !opts.Force {
		return t.state, fmt.Errorf("%w: %s holds %d keys (revision %d); restore into a new file, or pass --force to replace it (the old one is kept as %s.vcsnap-old-<timestamp>)",
			datastore.ErrTargetNotEmpty, t.cfg.Path, t.state.Keys, t.state.Revision, filepath.Base(t.cfg.Path))
	}
	t.plan = newPlan(opts, t.state.Revision)
	return t.state, nil
}

// Begin creates the temporary database next to the target (same file system, so the
// final rename is atomic) with kine's table; its indexes come at Commit, which is faster.
func (t *SQLiteTarget) Begin(ctx context.Context) error {
	t.cleanup()
	t.tmp = fmt.Sprintf("%s.vcsnap-tmp-%d", t.cfg.Path, os.Getpid())
	for _, s := range []string{"", "-journal", "-wal", "-shm"} {
		_ = os.Remove(t.tmp + s) // left by a killed earlier run of this process ID
	}
	p := url.Values{}
	// A temporary file: no journal and no fsync while building; it is synced once at the
	// end, before the rename.
	p.Add("_pragma", "journal_mode(OFF)")
	p.Add("_pragma", "synchronous(OFF)")
	// Rows are appended in id order and the indexes built once at Commit: 8 MiB of page
	// cache (which also bounds the index sort's memory) is plenty, and it counts fully in
	// vcsnap's resident memory (16 MiB was no faster at 100k keys).
	p.Add("_pragma", "cache_size(-8192)")
	db, err := sql.Open("sqlite", sqliteDSN(t.tmp, p))
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	t.db = db
	if _, err := db.ExecContext(ctx, sqliteTable); err != nil {
		return fmt.Errorf("create %s: %w", t.tmp, classify(t.cfg, err))
	}
	if t.tx, err = db.BeginTx(ctx, nil); err != nil {
		return classify(t.cfg, err)
	}
	t.w = newRowWriter(SQLite, t.tx, t.plan)
	return nil
}

func (t *SQLiteTarget) Lease(ctx context.Context, l datastore.Lease) error {
	t.w.lease(l)
	return nil
}

func (t *SQLiteTarget) Put(ctx context.Context, kv *datastore.KeyValue) error {
	if err := t.w.put(ctx, kv); err != nil {
		return classify(t.cfg, err)
	}
	return nil
}

// Commit completes the new database (compaction mark, sqlite_sequence at the final
// revision, kine's indexes, WAL mode as kine runs it), syncs it and swaps it in: the
// previous state.db, -wal and -shm are renamed to *.vcsnap-old-<timestamp> first.
func (t *SQLiteTarget) Commit(ctx context.Context) (int64, error) {
	final, err := t.w.finish(ctx)
	if err != nil {
		return 0, classify(t.cfg, err)
	}
	if _, err := t.tx.ExecContext(ctx, `UPDATE sqlite_sequence SET seq = ? WHERE name = 'kine'`, final); err != nil {
		return 0, classify(t.cfg, err)
	}
	err = t.tx.Commit()
	t.tx = nil
	if err != nil {
		return 0, classify(t.cfg, err)
	}
	for _, stmt := range sqliteIndexes {
		if _, err := t.db.ExecContext(ctx, stmt); err != nil {
			return 0, fmt.Errorf("create kine's indexes: %w", classify(t.cfg, err))
		}
	}
	var seq int64
	if err := t.db.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = 'kine'`).Scan(&seq); err != nil || seq != final {
		return 0, fmt.Errorf("sqlite_sequence is %d after the restore, want %d: %v", seq, final, err)
	}
	for _, stmt := range []string{`PRAGMA journal_mode=WAL`, `PRAGMA quick_check`} {
		rows, err := t.db.QueryContext(ctx, stmt)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", stmt, classify(t.cfg, err))
		}
		var res string
		if rows.Next() {
			_ = rows.Scan(&res)
		}
		rows.Close()
		if stmt == `PRAGMA quick_check` && res != "ok" {
			return 0, fmt.Errorf("the new database failed SQLite's integrity check: %s", res)
		}
	}
	if err := t.db.Close(); err != nil {
		return 0, classify(t.cfg, err)
	}
	t.db = nil
	if err := syncFile(t.tmp); err != nil {
		return 0, err
	}
	t.matchOwner()
	if err := t.swap(); err != nil {
		return 0, err
	}
	slog.Info("wrote kine database", "path", t.cfg.Path, "keys", t.w.rows, "revision", final)
	return final, nil
}

// swap moves the previous files aside and renames the new database into place. The -wal
// and -shm files go first: SQLite would otherwise apply the old WAL to the new file.
func (t *SQLiteTarget) swap() error {
	t.Stamp = time.Now().UTC().Format("20060102T150405.000Z") // two restores within one second keep distinct copies
	var moved [][2]string
	undo := func() {
		for i := len(moved) - 1; i >= 0; i-- {
			_ = os.Rename(moved[i][1], moved[i][0])
		}
	}
	for _, suffix := range []string{"-wal", "-shm", ""} {
		from := t.cfg.Path + suffix
		if _, err := os.Lstat(from); err != nil {
			continue
		}
		to := from + ".vcsnap-old-" + t.Stamp
		var err error
		linked := false
		if suffix == "" {
			// Keep the old database under its new name and replace state.db in one
			// atomic rename below: there is never a moment without a state.db. File
			// systems without hard links get two renames instead.
			linked = os.Link(from, to) == nil
		}
		if !linked {
			err = os.Rename(from, to)
		}
		if err != nil {
			undo()
			return fmt.Errorf("keep %s for rollback: %w", from, err)
		}
		if !linked {
			moved = append(moved, [2]string{from, to})
		}
		t.Kept = append(t.Kept, to)
	}
	if err := os.Rename(t.tmp, t.cfg.Path); err != nil {
		if _, serr := os.Lstat(t.cfg.Path); serr == nil {
			// state.db is still in place (it was linked, not moved): drop the link.
			_ = os.Remove(t.cfg.Path + ".vcsnap-old-" + t.Stamp)
		}
		undo()
		t.Kept = nil
		return fmt.Errorf("move the new database into place: %w", err)
	}
	t.tmp = ""
	if len(t.Kept) > 0 {
		p := t.cfg.Path
		removed, err := datastore.RemoveOlderRollbacks([]string{p, p + "-wal", p + "-shm"}, t.Stamp)
		if err != nil {
			slog.Warn("could not remove an older rollback copy", "error", err)
		}
		t.removed = removed
	}
	return syncDir(filepath.Dir(t.cfg.Path))
}

// RollbackCommand is the shell command that brings back the database a restore replaced.
func RollbackCommand(path, stamp string) string {
	b := shell.Quote(filepath.Base(path))
	return fmt.Sprintf(`cd %s && rm -f %[2]s-wal %[2]s-shm && for f in %[2]s %[2]s-wal %[2]s-shm; do [ -e "$f.vcsnap-old-%[3]s" ] && mv "$f.vcsnap-old-%[3]s" "$f"; done; true`,
		shell.Quote(filepath.Dir(path)), b, stamp)
}

// Rollback returns the kept previous files and the command that puts them back
// (datastore.Rollbacker).
func (t *SQLiteTarget) Rollback() ([]string, string, []string) {
	if len(t.Kept) == 0 {
		return nil, "", nil
	}
	return t.Kept, RollbackCommand(t.cfg.Path, t.Stamp), t.removed
}

// KeepsPreviousOnAbort: Abort drops the staged file; the target was never touched.
func (t *SQLiteTarget) KeepsPreviousOnAbort() {}

// matchOwner gives the new file the previous file's (or the directory's) owner and mode,
// so kine running as another user can open it. Best effort.
func (t *SQLiteTarget) matchOwner() {
	ref, err := os.Stat(t.cfg.Path)
	mode := os.FileMode(0o600)
	if err == nil {
		mode = ref.Mode().Perm()
	} else if ref, err = os.Stat(filepath.Dir(t.cfg.Path)); err != nil {
		return
	}
	_ = os.Chmod(t.tmp, mode)
	if st, ok := ref.Sys().(*syscall.Stat_t); ok {
		_ = os.Chown(t.tmp, int(st.Uid), int(st.Gid))
	}
}

// Abort removes the temporary database; the target was not touched.
func (t *SQLiteTarget) Abort(ctx context.Context) error {
	t.cleanup()
	return nil
}

func (t *SQLiteTarget) cleanup() {
	if t.tx != nil {
		_ = t.tx.Rollback()
		t.tx = nil
	}
	if t.db != nil {
		_ = t.db.Close()
		t.db = nil
	}
	if t.tmp != "" {
		for _, s := range []string{"", "-journal", "-wal", "-shm"} {
			_ = os.Remove(t.tmp + s)
		}
		t.tmp = ""
	}
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
