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
	Bundles    []PruneDecision `json:"bundles"`
	Incomplete []PruneDecision `json:"incomplete"`
	DryRun     bool            `json:"dryRun"`
}

// ErrNothingVerifies means no bundle under the prefix passed verification, so pruning
// would risk deleting the last good backup.
var ErrNothingVerifies = errors.New("no snapshot under the prefix verifies")

// incompleteStore is implemented by stores that can see and remove abandoned uploads.
type incompleteStore interface {
	ListIncomplete(ctx context.Context, prefix string) ([]storage.ObjectInfo, error)
	RemoveIncomplete(ctx context.Context, info storage.ObjectInfo) error
}

// Prune applies the policy to the complete full bundles under prefixURL. The newest bundle
// that passes a full verification is always kept; bundles that are damaged are reported
// and left alone for a person to look at.
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
	entries, err := List(ctx, prefixURL)
	if err != nil {
		return nil, err
	}
	var good []*Entry
	for _, e := range entries {
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

	res := &PruneResult{DryRun: o.DryRun}
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
		inc, err := is.ListIncomplete(ctx, loc.Name)
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
