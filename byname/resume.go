package byname

import (
	"context"
	"log/slog"

	"github.com/vcsnap/vcsnap/vcluster"
)

// ResumeResult is a virtual cluster brought back by Resume.
type ResumeResult struct {
	VCluster *vcluster.VCluster
	// Orphans are the engine Jobs an interrupted run left, each waited for and removed.
	Orphans []vcluster.JobResult
}

// Resume brings back a virtual cluster an interrupted restore left paused: it first
// waits until an engine Job the interrupted run left has finished (it may still be
// writing the datastore) and removes it, then scales the control plane back to the
// recorded replicas and waits until it is ready.
func Resume(ctx context.Context, h *Host, namespace, name string, l *slog.Logger) (*ResumeResult, error) {
	log := logger(l)
	cs, err := h.client()
	if err != nil {
		return nil, err
	}
	vc, err := vcluster.Discover(ctx, cs, namespace, name)
	if err != nil {
		return nil, err
	}
	orphans, err := vcluster.FinishOrphans(ctx, cs, vc)
	if err != nil {
		return nil, err
	}
	for _, o := range orphans {
		if o.Succeeded {
			log.Info("the interrupted run's engine Job had finished its work", "job", o.Job)
		} else {
			log.Warn("the interrupted run's engine Job failed (a failed restore puts the previous keys back); its log ends with:\n"+o.LogTail(20), "job", o.Job)
		}
	}
	if err := vcluster.Resume(ctx, cs, vc); err != nil {
		return nil, err
	}
	return &ResumeResult{VCluster: vc, Orphans: orphans}, nil
}
