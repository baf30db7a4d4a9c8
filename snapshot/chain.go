package snapshot

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// Names of the bundles snapshot watch writes under its prefix: the UTC time the bundle
// was started, so names sort by time, and the kind.
const (
	fullSuffix  = "-full"
	deltaSuffix = "-delta"
	stampFormat = "20060102T150405.000Z"
)

// ChainBundleName is the object name of a bundle snapshot watch writes under prefix.
func ChainBundleName(prefix string, kind bundle.Kind, at time.Time) string {
	suffix := fullSuffix
	if kind == bundle.KindDelta {
		suffix = deltaSuffix
	}
	return prefix + at.UTC().Format(stampFormat) + suffix
}

// NewChainID returns a fresh chain id.
func NewChainID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Chain is one full bundle and the delta bundles that continue it up to the next full
// bundle of its chain id (which a restore may use instead). A bundle made by snapshot
// create is a chain of its own without deltas.
type Chain struct {
	ID     string   `json:"id,omitempty"`
	Full   *Entry   `json:"full"`
	Deltas []*Entry `json:"deltas,omitempty"`
	// The revisions and times covered: from the full bundle to the last delta.
	FromRevision int64     `json:"fromRevision"`
	ToRevision   int64     `json:"toRevision"`
	From         time.Time `json:"from"`
	To           time.Time `json:"to"`
	// Gap, when set, is the first hole after the last delta: deltas of the chain id
	// exist beyond it, but the revisions between are missing.
	Gap *Gap `json:"gap,omitempty"`
}

// Gap is a range of revisions no bundle covers: (After, Before].
type Gap struct {
	After  int64 `json:"after"`
	Before int64 `json:"before"`
	// Why, when known: the damaged bundle that should have covered it.
	Why string `json:"why,omitempty"`
}

func (g *Gap) String() string {
	s := fmt.Sprintf("revisions %d to %d are missing", g.After+1, g.Before)
	if g.Why != "" {
		s += " (" + g.Why + ")"
	}
	return s
}

// Bundles returns the full bundle and the deltas, in order.
func (c *Chain) Bundles() []*Entry { return append([]*Entry{c.Full}, c.Deltas...) }

// lineage holds the complete bundles of one chain id, sorted by revision.
type lineage struct {
	fulls  []*Entry
	deltas []*Entry
	byBase map[int64]*Entry
	// damaged are bundles whose manifest reads but whose body failed verification.
	damaged []*Entry
}

func lineages(entries []*Entry) map[string]*lineage {
	out := map[string]*lineage{}
	for _, e := range entries {
		if e.Manifest == nil || e.Manifest.IsSafetyBackup() {
			continue // a safety backup is no snapshot of the source (see SafetyBackups)
		}
		id := e.Manifest.Chain
		if id == "" {
			id = "standalone:" + e.Name // a bundle of snapshot create stands alone
		}
		l := out[id]
		if l == nil {
			l = &lineage{byBase: map[int64]*Entry{}}
			out[id] = l
		}
		if e.err != nil {
			l.damaged = append(l.damaged, e)
			continue
		}
		if e.Manifest.Kind == bundle.KindFull {
			l.fulls = append(l.fulls, e)
		} else {
			l.deltas = append(l.deltas, e)
			if old, ok := l.byBase[e.Manifest.BaseRevision]; !ok || old.Manifest.Revision < e.Manifest.Revision {
				l.byBase[e.Manifest.BaseRevision] = e
			}
		}
	}
	for _, l := range out {
		sort.SliceStable(l.fulls, func(i, j int) bool { return less(l.fulls[i], l.fulls[j]) })
		sort.SliceStable(l.deltas, func(i, j int) bool { return less(l.deltas[i], l.deltas[j]) })
	}
	return out
}

func less(a, b *Entry) bool {
	if a.Manifest.Revision != b.Manifest.Revision {
		return a.Manifest.Revision < b.Manifest.Revision
	}
	return a.Manifest.Created.Before(b.Manifest.Created)
}

// follow walks the deltas linked from a revision while stop allows: each delta starts
// where the previous bundle ended. It returns the deltas and, if deltas of the lineage
// exist beyond where the walk ended, the gap.
func (l *lineage) follow(from int64, stop func(*Entry) bool) ([]*Entry, *Gap) {
	var path []*Entry
	cur := from
	for {
		d, ok := l.byBase[cur]
		if !ok || d.Manifest.Revision <= cur {
			break
		}
		if stop != nil && stop(d) {
			return path, nil
		}
		path = append(path, d)
		cur = d.Manifest.Revision
	}
	for _, d := range l.deltas {
		if d.Manifest.BaseRevision > cur {
			g := &Gap{After: cur, Before: d.Manifest.BaseRevision}
			for _, bad := range l.damaged {
				if bad.Manifest.BaseRevision == cur {
					g.Why = fmt.Sprintf("%s failed verification: %s", bad.Name, bad.Problem)
				}
			}
			return path, g
		}
	}
	return path, nil
}

// Chains groups complete bundles into chains, oldest first. Safety backups are no part
// of any chain. Deltas that no full bundle
// reaches are returned as orphans.
func Chains(entries []*Entry) (chains []*Chain, orphans []*Entry) {
	used := map[*Entry]bool{}
	for id, l := range lineages(entries) {
		for i, f := range l.fulls {
			next := int64(-1)
			for _, g := range l.fulls[i+1:] {
				if g.Manifest.Revision > f.Manifest.Revision {
					next = g.Manifest.Revision
					break
				}
			}
			deltas, gap := l.follow(f.Manifest.Revision, func(d *Entry) bool {
				return next >= 0 && d.Manifest.BaseRevision >= next
			})
			c := &Chain{Full: f, Deltas: deltas, FromRevision: f.Manifest.Revision, ToRevision: f.Manifest.Revision,
				From: f.Manifest.Created, To: f.Manifest.Created}
			if !strings.HasPrefix(id, "standalone:") {
				c.ID = id
			}
			if n := len(deltas); n > 0 {
				c.ToRevision, c.To = deltas[n-1].Manifest.Revision, deltas[n-1].Manifest.Created
			}
			if next < 0 || (gap != nil && gap.After < next) {
				c.Gap = gap
			}
			used[f] = true
			for _, d := range deltas {
				used[d] = true
			}
			chains = append(chains, c)
		}
		for _, d := range l.deltas {
			if !used[d] {
				orphans = append(orphans, d)
			}
		}
	}
	sort.SliceStable(chains, func(i, j int) bool {
		if !chains[i].From.Equal(chains[j].From) {
			return chains[i].From.Before(chains[j].From)
		}
		return chains[i].FromRevision < chains[j].FromRevision
	})
	sort.SliceStable(orphans, func(i, j int) bool { return orphans[i].Name < orphans[j].Name })
	return chains, orphans
}

// Point is a point in time to restore to: a revision, or a time (the newest captured
// state at or before it).
type Point struct {
	Revision int64
	Time     time.Time
}

func (p Point) String() string {
	if p.Revision > 0 {
		return fmt.Sprintf("revision %d", p.Revision)
	}
	return p.Time.UTC().Format(time.RFC3339)
}

// Plan is what a point-in-time restore reads: a full bundle, then deltas in order, and
// the revision to stop at (records with a higher mod revision are left out).
type Plan struct {
	Full     *Entry   `json:"full"`
	Deltas   []*Entry `json:"deltas,omitempty"`
	Revision int64    `json:"revision"`
	// Gap is set when the plan stops short of the point asked for (up to last good).
	Gap *Gap `json:"gap,omitempty"`
	// Captured is when the plan's last bundle was taken: for a time asked for after it,
	// the state restored is the one at this time.
	Captured time.Time `json:"captured"`
}

// Bundles returns the full bundle and the deltas, in order.
func (p *Plan) Bundles() []*Entry { return append([]*Entry{p.Full}, p.Deltas...) }

// GapError says a point cannot be reached because revisions are missing.
type GapError struct {
	Point     Point
	Gap       Gap
	LastGood  int64
	FullEntry string
}

func (e *GapError) Error() string {
	return fmt.Sprintf("cannot restore to %s: %s after the chain of %s; the last point before the gap is revision %d (restore it with --up-to-last-good)",
		e.Point, e.Gap.String(), e.FullEntry, e.LastGood)
}

// PlanRestore picks the bundles that restore the state at p: the newest full bundle at
// or before p whose chain reaches p, and its deltas. A point that only a chain with a
// gap could reach is refused with a *GapError, or with upToLastGood planned up to the
// last revision before the gap. damaged names bundles that could not be read (for the
// message).
func PlanRestore(entries []*Entry, p Point, upToLastGood bool) (*Plan, error) {
	ls := lineages(entries)
	type cand struct {
		l *lineage
		f *Entry
	}
	var cands []cand
	for id, l := range ls {
		if strings.HasPrefix(id, "standalone:") {
			// Only chains of snapshot watch: a bundle of snapshot create (or a safety
			// backup) under the prefix may hold another datastore's history.
			continue
		}
		for _, f := range l.fulls {
			if before(f, p) {
				cands = append(cands, cand{l, f})
			}
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("no complete full bundle of a snapshot watch chain at or before %s under this prefix: %w", p, ErrNoPoint)
	}
	sort.SliceStable(cands, func(i, j int) bool { return less(cands[j].f, cands[i].f) }) // newest first
	var firstErr error
	var best *Plan
	for _, c := range cands {
		deltas, gap := c.l.follow(c.f.Manifest.Revision, func(d *Entry) bool {
			if p.Revision > 0 {
				return d.Manifest.BaseRevision >= p.Revision
			}
			return d.Manifest.Created.After(p.Time)
		})
		end := c.f.Manifest.Revision
		if n := len(deltas); n > 0 {
			end = deltas[n-1].Manifest.Revision
		}
		plan := &Plan{Full: c.f, Deltas: deltas, Revision: end, Captured: lastTime(c.f, deltas)}
		if p.Revision > 0 {
			plan.Revision = min(end, p.Revision)
		}
		reached := end >= p.Revision
		if p.Revision == 0 {
			// A time is reached unless a delta captured by then lies beyond a gap.
			reached = gap == nil || !gapBefore(c.l, gap, p.Time)
		}
		if reached && p.Revision > 0 {
			return plan, nil
		}
		if reached {
			// For a time, the chain whose last bundle by then is newest wins.
			if best == nil || lastTime(best.Full, best.Deltas).Before(lastTime(c.f, deltas)) {
				best = plan
			}
			continue
		}
		var err error
		if gap != nil {
			err = &GapError{Point: p, Gap: *gap, LastGood: end, FullEntry: c.f.Name}
			if upToLastGood && best == nil {
				plan.Gap = gap
				best = plan
				continue
			}
		} else {
			err = fmt.Errorf("cannot restore to %s: the chain of %s ends at revision %d (captured %s); no bundle covers later revisions yet: %w",
				p, c.f.Name, end, lastTime(c.f, deltas).Format(time.RFC3339), ErrNoPoint)
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if best != nil {
		return best, nil
	}
	return nil, firstErr
}

// ErrNoPoint means no chain under the prefix covers the point asked for.
var ErrNoPoint = fmt.Errorf("no bundle covers the point")

func before(f *Entry, p Point) bool {
	if p.Revision > 0 {
		return f.Manifest.Revision <= p.Revision
	}
	return !f.Manifest.Created.After(p.Time)
}

func gapBefore(l *lineage, g *Gap, t time.Time) bool {
	for _, d := range l.deltas {
		if d.Manifest.BaseRevision >= g.Before && !d.Manifest.Created.After(t) {
			return true
		}
	}
	return false
}

func lastTime(f *Entry, deltas []*Entry) time.Time {
	if n := len(deltas); n > 0 {
		return deltas[n-1].Manifest.Created
	}
	return f.Manifest.Created
}
