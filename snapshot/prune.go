package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
	"github.com/vcsnap/vcsnap/storage"
)

// Policy says which snapshots to keep, like restic's forget: a snapshot is kept when any
// rule keeps it. Buckets (hour, day, ISO week, month) are in UTC; in each of the newest N
// buckets that hold snapshots, the newest snapshot is kept. Within is measured back from
// the newest snapshot, not from now, so backups that stopped are never all pruned away.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly int
	Within                               time.Duration
}

// Empty reports whether the policy keeps nothing by itself.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Within == 0
}

// PruneOptions configure Prune.
type PruneOptions struct {
	Policy Policy
	// VClusterName and VClusterNamespace, when set, limit pruning to bundles whose
	// manifest records that virtual cluster, so clusters sharing a store prefix (or
	// names that prefix each other, vc1 and vc1-b) never prune each other's bundles.
	VClusterName, VClusterNamespace string
	DryRun                          bool
	// SafetyPolicy is the retention of safety backups (bundles a forced restore or
	// migration saved of the target it replaced), which never count as snapshots. An
	// empty policy keeps every safety backup.
	SafetyPolicy Policy
	// IncompleteGrace is how old an abandoned upload (a file store's .part file, an S3
	// multipart upload never completed) must be before it is removed; zero means 24h.
	IncompleteGrace time.Duration
	// Keys open encrypted bundles, so the newest one can be verified.
	Keys ReadOptions
	// Now overrides the clock for the grace period (tests).
	Now func() time.Time
}

// PruneDecision is what Prune did, or would do, with one bundle or upload.
type PruneDecision struct {
	URL     string    `json:"url"`
	Created time.Time `json:"created"`
	Keep    bool      `json:"keep"`
	Reasons []string  `json:"reasons,omitempty"`
}

// PruneResult lists every decision.
type PruneResult struct {
	// Folder is the store folder pruned (the prefix with a trailing slash).
	Folder        string          `json:"folder"`
	Bundles       []PruneDecision `json:"bundles"`
	SafetyBackups []PruneDecision `json:"safetyBackups"`
	Incomplete    []PruneDecision `json:"incomplete"`
	DryRun        bool            `json:"dryRun"`
}

// ErrNothingVerifies means no bundle under the prefix passed verification, so pruning
// would risk deleting the last good backup.
var ErrNothingVerifies = errors.New("no snapshot under the prefix verifies")

// incompleteStore is implemented by stores that can see and remove abandoned uploads.
type incompleteStore interface {
	ListIncomplete(ctx context.Context, prefix string) ([]storage.ObjectInfo, error)
	RemoveIncomplete(ctx context.Context, info storage.ObjectInfo) error
}

// Prune applies the policy to the complete full bundles in the folder prefixURL names
// (and the folders below it). The newest bundle that passes a full verification is always
// kept; bundles that are damaged are reported and left alone for a person to look at.
// Safety backups follow SafetyPolicy and never count as snapshots. Nothing is decided
// while any object cannot be read (ErrUnreadable).
func Prune(ctx context.Context, prefixURL string, o PruneOptions) (*PruneResult, error) {
	if o.Policy.Empty() {
		return nil, errors.New("prune needs at least one --keep-* rule; it never deletes every snapshot")
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	grace := o.IncompleteGrace
	if grace == 0 {
		grace = 24 * time.Hour
	}
	loc, err := storage.Open(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	folder := storage.Folder(loc.Name)
	entries, err := List(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	// A bundle that cannot be read might be the newest good one: deciding without it
	// could delete what a person still needs.
	var unreadable []string
	for _, e := range entries {
		if e.Unreadable {
			unreadable = append(unreadable, e.URL+" ("+e.Problem+")")
		}
	}
	if len(unreadable) > 0 {
		return nil, fmt.Errorf("%w: %d object(s) under %s, first %s; prune decides nothing while it cannot see every bundle",
			ErrUnreadable, len(unreadable), storage.FolderURL(prefixURL), unreadable[0])
	}
	var good, safety []*Entry
	for _, e := range entries {
		if e.SafetyBackup() {
			safety = append(safety, e)
			continue
		}
		if e.Manifest == nil {
			slog.Warn("leaving a damaged bundle alone", "bundle", e.URL, "problem", e.Problem)
			continue
		}
		src := e.Manifest.Source
		if (o.VClusterName != "" && src.VClusterName != o.VClusterName) ||
			(o.VClusterNamespace != "" && src.VClusterNamespace != o.VClusterNamespace) {
			continue // another virtual cluster's bundle
		}
		good = append(good, e)
	}
	// Chains of snapshot watch are kept or deleted whole: a full bundle with the deltas
	// that continue it. A bundle of snapshot create is a chain of its own.
	chains, orphans := Chains(good)
	sort.SliceStable(chains, func(i, j int) bool { return chains[i].Full.Manifest.Created.After(chains[j].Full.Manifest.Created) })
	fulls := make([]*Entry, len(chains))
	for i, c := range chains {
		fulls[i] = c.Full
	}
	decisions := applyPolicy(fulls, o.Policy)

	// The newest bundle that verifies is kept whatever the rules say.
	verified := -1
	for i, e := range fulls {
		if err := verifyForPrune(ctx, storage.Location{Store: loc.Store, Name: e.Name}, o.Keys); err != nil {
			slog.Warn("a bundle failed verification; trying an older one", "bundle", e.URL, "error", err)
			continue
		}
		verified = i
		break
	}
	if len(fulls) > 0 && verified < 0 {
		return nil, fmt.Errorf("%w: refusing to prune %s", ErrNothingVerifies, prefixURL)
	}
	if verified >= 0 && !decisions[verified].Keep {
		decisions[verified].Keep = true
	}
	if verified >= 0 {
		decisions[verified].Reasons = append(decisions[verified].Reasons, "newest verified")
	}

	res := &PruneResult{Folder: storage.FolderURL(prefixURL), DryRun: o.DryRun, Bundles: []PruneDecision{}, Incomplete: []PruneDecision{}}
	res.SafetyBackups, err = pruneSafety(ctx, loc.Store, safety, o)
	if err != nil {
		return res, err
	}
	for i, c := range chains {
		res.Bundles = append(res.Bundles, decisions[i])
		for _, d := range c.Deltas {
			res.Bundles = append(res.Bundles, PruneDecision{URL: d.URL, Created: d.Manifest.Created, Keep: decisions[i].Keep,
				Reasons: []string{"delta of " + c.Full.Name}})
		}
	}
	for _, d := range orphans {
		res.Bundles = append(res.Bundles, PruneDecision{URL: d.URL, Created: d.Manifest.Created, Keep: true,
			Reasons: []string{"delta no full bundle reaches; left alone"}})
	}
	for i, d := range decisions {
		if d.Keep || o.DryRun {
			continue
		}
		// Deltas newest first, then the full bundle: if this stops half way, what is left
		// is still a chain that restores.
		c := chains[i]
		for j := len(c.Deltas) - 1; j >= 0; j-- {
			if err := loc.Store.Delete(ctx, c.Deltas[j].Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return res, fmt.Errorf("delete %s: %w", c.Deltas[j].URL, err)
			}
		}
		if err := loc.Store.Delete(ctx, c.Full.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return res, fmt.Errorf("delete %s: %w", d.URL, err)
		}
	}

	if is, ok := loc.Store.(incompleteStore); ok {
		inc, err := is.ListIncomplete(ctx, folder)
		if err != nil {
			return res, err
		}
		for _, info := range inc {
			d := PruneDecision{URL: loc.Store.URL(info.Name), Created: info.Modified, Keep: now().Sub(info.Modified) < grace}
			if d.Keep {
				d.Reasons = []string{"upload may still be running (younger than the grace period)"}
			} else if !o.DryRun {
				if err := is.RemoveIncomplete(ctx, info); err != nil {
					return res, fmt.Errorf("remove abandoned upload %s: %w", d.URL, err)
				}
			}
			res.Incomplete = append(res.Incomplete, d)
		}
	}
	return res, nil
}

// pruneSafety applies the safety policy to safety backups: newest first, every one kept
// when the policy is empty.
func pruneSafety(ctx context.Context, s storage.Store, safety []*Entry, o PruneOptions) ([]PruneDecision, error) {
	sort.SliceStable(safety, func(i, j int) bool { return safety[i].Manifest.Created.After(safety[j].Manifest.Created) })
	out := applyPolicy(safety, o.SafetyPolicy)
	for i := range out {
		if o.SafetyPolicy.Empty() {
			out[i].Keep = true
			out[i].Reasons = []string{"safety backup (no --keep-safety-* rule: kept)"}
			continue
		}
		out[i].Reasons = append([]string{"safety backup"}, out[i].Reasons...)
		if out[i].Keep || o.DryRun {
			continue
		}
		if err := s.Delete(ctx, safety[i].Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return out, fmt.Errorf("delete %s: %w", out[i].URL, err)
		}
	}
	return out, nil
}

// verifyForPrune fully verifies a bundle; an encrypted one without its key (a backup Job
// holds only public recipients) gets the raw check of every CRC and the sha256 instead.
func verifyForPrune(ctx context.Context, loc storage.Location, o ReadOptions) error {
	_, _, err := Scan(ctx, loc, o, nil)
	if !errors.Is(err, bundle.ErrEncrypted) {
		return err
	}
	rc, err := loc.Store.Get(ctx, loc.Name)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = bundle.VerifyRaw(rc)
	return err
}

// applyPolicy decides for bundles sorted newest first.
func applyPolicy(bundles []*Entry, p Policy) []PruneDecision {
	out := make([]PruneDecision, len(bundles))
	for i, e := range bundles {
		out[i] = PruneDecision{URL: e.URL, Created: e.Manifest.Created}
	}
	keep := func(i int, why string) {
		out[i].Keep = true
		out[i].Reasons = append(out[i].Reasons, why)
	}
	for i := 0; i < len(bundles) && i < p.Last; i++ {
		keep(i, "last")
	}
	buckets := []struct {
		n    int
		name string
		key  func(time.Time) string
	}{
		{p.Hourly, "hourly", func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{p.Daily, "daily", func(t time.Time) string { return t.Format("2006-01-02") }},
		{p.Weekly, "weekly", func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{p.Monthly, "monthly", func(t time.Time) string { return t.Format("2006-01") }},
	}
	for _, b := range buckets {
		seen := map[string]bool{}
		for i, e := range bundles {
			if len(seen) >= b.n {
				break
			}
			k := b.key(e.Manifest.Created.UTC())
			if !seen[k] {
				seen[k] = true
				keep(i, b.name)
			}
		}
	}
	if p.Within > 0 && len(bundles) > 0 {
		newest := bundles[0].Manifest.Created
		for i, e := range bundles {
			if newest.Sub(e.Manifest.Created) <= p.Within {
				keep(i, "within "+p.Within.String())
			}
		}
	}
	return out
}
