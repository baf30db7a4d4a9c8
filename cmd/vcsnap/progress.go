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
}

func (a *app) progress() (snapshot.ProgressFunc, func()) {
	if a.quiet {
		return nil, func() {}
	}
	tty := false
	if f, ok := a.stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	d := &progressDisplay{w: a.stderr, tty: tty, start: time.Now(), interval: 5 * time.Second}
	if tty {
		d.interval = 100 * time.Millisecond
	}
	return d.update, d.finish
}

func (d *progressDisplay) update(p snapshot.Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
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
	elapsed := now.Sub(d.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.Keys) / elapsed
	}
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
			humanBytes(p.Bytes), rate, humanBytes(int64(float64(p.Bytes)/max(elapsed, 1e-9))), eta)
		d.drawn = true
		return
	}
	slog.Info("progress", "phase", p.Phase, "keys", p.Keys, "total", p.TotalKeys, "bytes", p.Bytes,
		"keysPerSecond", int64(rate), "eta", eta)
}

func (d *progressDisplay) finish() {
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
