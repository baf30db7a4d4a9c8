package main

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vcsnap/vcsnap/report"
	"github.com/vcsnap/vcsnap/snapshot"
)

// reportFlags make a scheduled run's outcome visible (the Helm chart's CronJob sets them).
type reportFlags struct {
	summary     bool
	event       bool
	configMap   string
	pushgateway string
}

func (r *reportFlags) add(f *pflag.FlagSet) {
	f.BoolVar(&r.summary, "summary", false, "print a one-line JSON summary of the outcome on stdout")
	f.BoolVar(&r.event, "report-event", false, "record the outcome as a Kubernetes Event on this Job (in-cluster)")
	f.StringVar(&r.configMap, "report-configmap", "", "write the outcome into this status ConfigMap (in-cluster)")
	f.StringVar(&r.pushgateway, "pushgateway", "", "push metrics to this Prometheus Pushgateway URL")
}

// expandTime replaces {time} in a bundle URL with the UTC time, so scheduled runs name
// each bundle uniquely and in order.
func expandTime(url string, now time.Time) string {
	return strings.ReplaceAll(url, "{time}", now.UTC().Format("20060102T150405Z"))
}

// reportCreate publishes a create's outcome. Failures to report are logged, never
// turned into a failed backup.
func (a *app) reportCreate(ctx context.Context, r reportFlags, o snapshot.CreateOptions, res *snapshot.CreateResult, runErr error, took time.Duration) {
	if !r.summary && !r.event && r.configMap == "" && r.pushgateway == "" {
		return
	}
	s := &report.Summary{Time: time.Now().UTC(), Operation: "snapshot", Outcome: "success",
		VirtualCluster: o.Source.VClusterName, DurationSeconds: took.Seconds()}
	if res != nil {
		s.Bundle, s.Keys, s.Bytes, s.Revision = res.URL, res.Manifest.Keys, res.Size, res.Manifest.Revision
	} else {
		s.Bundle = o.Store
	}
	if runErr != nil {
		s.Outcome, s.Error = "failure", runErr.Error()
	}
	// Reports are sent even when the run was cancelled.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if r.summary {
		s.WriteLine(a.stdout)
	}
	if r.event || r.configMap != "" {
		t, err := report.InCluster()
		if err != nil {
			slog.Warn("cannot report to Kubernetes", "error", err)
		} else {
			if r.event {
				if err := t.Event(ctx, s); err != nil {
					slog.Warn("could not record the Event", "error", err)
				}
			}
			if r.configMap != "" {
				if err := t.ConfigMap(ctx, r.configMap, s); err != nil {
					slog.Warn("could not update the status ConfigMap", "configmap", r.configMap, "error", err)
				}
			}
		}
	}
	if r.pushgateway != "" {
		if err := report.Push(ctx, r.pushgateway, s); err != nil {
			slog.Warn("could not push metrics", "error", err)
		}
	}
}
