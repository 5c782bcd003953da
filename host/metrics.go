package host

import (
	"context"
	"io"
	"runtime"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/metrics"
)

// WriteMetrics implements api.MetricsWriter: the services' numbers as hbd
// holds them, then the plugin's (one Info call; a plugin that does not
// answer makes hb_plugin_up 0, not the scrape fail).
func (d *Daemon) WriteMetrics(ctx context.Context, w io.Writer) error {
	snap := metrics.Snapshot{Version: api.BuildVersion(), GoVersion: runtime.Version()}
	d.mu.RLock()
	sh := d.shim
	snap.EventsMissed = d.eventsMissed
	for _, name := range d.order {
		s := d.svcs[name]
		st := s.status()
		m := metrics.Service{
			Name: st.Name, State: st.State, Up: st.PID != 0,
			Exits: st.Exits, LastExitStatus: st.LastStatus,
		}
		if st.Generation > 0 {
			m.Restarts = st.Generation - 1
		}
		if s.pid != 0 && !s.adopted && !s.startedAt.IsZero() {
			m.StartTime = s.startedAt
		}
		snap.Services = append(snap.Services, m)
	}
	d.mu.RUnlock()
	if sh != nil {
		if i, err := sh.Info(ctx); err == nil {
			snap.Plugin = &metrics.Plugin{Kill: i.KillTracepoint, Tracepoint: i.Tracepoint, Connector: i.Connector, Pidfd: i.Pidfd, Metrics: i.Metrics}
		} else {
			d.log.Debug("metrics: plugin info", "err", err)
		}
	}
	return metrics.Write(w, snap)
}
