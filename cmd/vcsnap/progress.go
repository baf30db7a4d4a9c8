package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/vcsnap/vcsnap/snapshot"
)

// progressDisplay renders progress as one updating line on a terminal, or as a log line
// every few seconds otherwise (a Job's log, a pipe).
type progressDisplay struct {
	w        io.Writer
	tty      bool
	mu       sync.Mutex
	start    time.Time
	last     time.Time
	phase    string
	drawn    bool
	interval time.Duration
	// seen is when the last report arrived and latest what it said: a heartbeat says
	// when none came for a while (a datastore or store that stopped answering).
	seen   time.Time
	latest snapshot.Progress
	stop   chan struct{}
}

func (a *app) progress() (snapshot.ProgressFunc, func()) {
	if a.quiet {
		return nil, func() {}
	}
	tty := false
	if f, ok := a.stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	d := &progressDisplay{w: a.stderr, tty: tty, start: time.Now(), seen: time.Now(), interval: 5 * time.Second, stop: make(chan struct{})}
	if tty {
		d.interval = 100 * time.Millisecond
	}
	go d.heartbeat(5 * time.Second)
	return d.update, d.finish
}

// heartbeat logs, every period without a progress report, that the run is still waiting
// and for how long, so that a stalled datastore or store is never minutes of silence.
func (d *progressDisplay) heartbeat(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			d.mu.Lock()
			quiet := now.Sub(d.seen)
			p := d.latest
			if quiet >= period && d.drawn {
				fmt.Fprintln(d.w)
				d.drawn = false
			}
			d.mu.Unlock()
			if quiet >= period {
				phase := p.Phase
				if phase == "" {
					phase = "starting"
				}
				slog.Warn("still working: no progress report from the datastore or the store", "phase", phase, "keys", p.Keys,
					"quietFor", quiet.Round(time.Second))
			}
		}
	}
}

func (d *progressDisplay) update(p snapshot.Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	d.seen, d.latest = now, p
	if p.Phase != d.phase {
		d.phase, d.start = p.Phase, now
		if d.drawn {
			fmt.Fprintln(d.w)
			d.drawn = false
		}
	}
	done := p.TotalKeys >= 0 && p.Keys >= p.TotalKeys
	if now.Sub(d.last) < d.interval && !done {
		return
	}
	d.last = now
	// Rates over less than a second are noise (the first report can come microseconds
	// after the start of a phase: "112.1 PiB/s").
	elapsed := max(now.Sub(d.start).Seconds(), 1)
	rate := float64(p.Keys) / elapsed
	eta := ""
	if p.TotalKeys > 0 && rate > 0 && !done {
		eta = " ETA " + (time.Duration(float64(p.TotalKeys-p.Keys)/rate) * time.Second).Round(time.Second).String()
	}
	total := ""
	if p.TotalKeys >= 0 {
		total = fmt.Sprintf("/%d", p.TotalKeys)
	}
	if d.tty {
		fmt.Fprintf(d.w, "\r\033[K%s: %d%s keys, %s, %.0f keys/s, %s/s%s", p.Phase, p.Keys, total,
			humanBytes(p.Bytes), rate, humanBytes(int64(float64(p.Bytes)/elapsed)), eta)
		d.drawn = true
		return
	}
	slog.Info("progress", "phase", p.Phase, "keys", p.Keys, "total", p.TotalKeys, "bytes", p.Bytes,
		"keysPerSecond", int64(rate), "eta", eta)
}

func (d *progressDisplay) finish() {
	close(d.stop)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.drawn {
		fmt.Fprintln(d.w)
		d.drawn = false
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
