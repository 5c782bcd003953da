package metrics

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hbshim/hb/host/metrics/metricstest"
	"github.com/hbshim/hb/plugin"
)

func TestWriteParses(t *testing.T) {
	start := time.Unix(1765000000, 250_000_000)
	s := Snapshot{
		Version:   `v1.2.0 (rev "x"\y)`, // escaped in the label
		GoVersion: "go1.26.8",
		Services: []Service{
			{Name: "rx", State: "running", Up: true, Restarts: 3, Exits: 3, LastExitStatus: 137, StartTime: start},
			{Name: "tx-0.a_b", State: "backoff", Exits: 2, LastExitStatus: 1},
			{Name: "idle", State: "stopped"},
		},
		Plugin: &Plugin{Kill: true, Connector: true, Pidfd: true, Metrics: plugin.Metrics{
			Resyncs: 2, SubscribersDropped: 1,
			DetectToStore: plugin.Histogram{BoundsNs: []uint64{1000, 10000, 100000}, Counts: []uint64{5, 3, 0}, Count: 9, SumNs: 250000},
			Respawn:       plugin.Histogram{BoundsNs: []uint64{1_000_000}, Counts: []uint64{2}, Count: 2, SumNs: 900_000},
		}},
		EventsMissed: 4,
	}
	var b bytes.Buffer
	if err := Write(&b, s); err != nil {
		t.Fatal(err)
	}
	fams := metricstest.Parse(t, b.String())

	for _, tc := range []struct {
		name string
		lbl  []string
		want float64
	}{
		{"hb_build_info", []string{"version", `v1.2.0 (rev "x"\y)`, "goversion", "go1.26.8"}, 1},
		{"hb_service_up", []string{"service", "rx"}, 1},
		{"hb_service_up", []string{"service", "tx-0.a_b"}, 0},
		{"hb_service_state", []string{"service", "rx", "state", "running"}, 1},
		{"hb_service_state", []string{"service", "rx", "state", "backoff"}, 0},
		{"hb_service_state", []string{"service", "tx-0.a_b", "state", "backoff"}, 1},
		{"hb_service_restarts_total", []string{"service", "rx"}, 3},
		{"hb_service_exits_total", []string{"service", "tx-0.a_b"}, 2},
		{"hb_service_last_exit_status", []string{"service", "rx"}, 137},
		{"hb_service_start_time_seconds", []string{"service", "rx"}, 1765000000.25},
		{"hb_plugin_up", nil, 1},
		{"hb_events_missed_total", nil, 4},
		{"hb_detector_active", []string{"detector", "connector"}, 1},
		{"hb_detector_active", []string{"detector", "tracepoint"}, 0},
		{"hb_detector_active", []string{"detector", "kill"}, 1},
		{"hb_connector_resyncs_total", nil, 2},
		{"hb_plugin_subscribers_dropped_total", nil, 1},
		{"hb_exit_detect_to_store_seconds", nil, 9},
		{"hb_respawn_seconds", nil, 2},
	} {
		if got, ok := metricstest.Value(fams, tc.name, tc.lbl...); !ok || got != tc.want {
			t.Errorf("%s%v = %v (present %v), want %v", tc.name, tc.lbl, got, ok, tc.want)
		}
	}
	if _, ok := metricstest.Value(fams, "hb_service_last_exit_status", "service", "idle"); ok {
		t.Error("hb_service_last_exit_status for a service that never exited")
	}
	if _, ok := metricstest.Value(fams, "hb_service_start_time_seconds", "service", "tx-0.a_b"); ok {
		t.Error("hb_service_start_time_seconds for a service without a process")
	}
	if n := len(fams["hb_service_state"].GetMetric()); n != len(States)*len(s.Services) {
		t.Errorf("hb_service_state has %d series, want %d", n, len(States)*len(s.Services))
	}
	h := fams["hb_exit_detect_to_store_seconds"].GetMetric()[0].GetHistogram()
	wantBuckets := []struct {
		le  float64
		cum uint64
	}{{1e-6, 5}, {1e-5, 8}, {1e-4, 8}}
	for i, w := range wantBuckets {
		if b := h.GetBucket()[i]; math.Abs(b.GetUpperBound()-w.le) > 1e-15 || b.GetCumulativeCount() != w.cum {
			t.Errorf("bucket %d: le=%g %d, want le=%g %d", i, b.GetUpperBound(), b.GetCumulativeCount(), w.le, w.cum)
		}
	}
	if h.GetSampleSum() != 250e-6 {
		t.Errorf("sum %g, want 250e-6", h.GetSampleSum())
	}
	for name, f := range fams {
		if !strings.HasPrefix(name, "hb_") || f.GetHelp() == "" {
			t.Errorf("%s: want the hb_ prefix and a HELP", name)
		}
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s without _total", name)
		}
	}
}

func TestWriteWithoutPlugin(t *testing.T) {
	var b bytes.Buffer
	if err := Write(&b, Snapshot{Version: "v1", GoVersion: "go1"}); err != nil {
		t.Fatal(err)
	}
	fams := metricstest.Parse(t, b.String())
	if v, ok := metricstest.Value(fams, "hb_plugin_up"); !ok || v != 0 {
		t.Errorf("hb_plugin_up = %v (present %v), want 0", v, ok)
	}
	if _, ok := fams["hb_detector_active"]; ok {
		t.Error("detector series without a plugin")
	}
}

// TestContribNames: every hb_ name the contrib/prometheus rules use is one
// hbd writes, so a rename cannot leave the alerts silently empty.
func TestContribNames(t *testing.T) {
	var b bytes.Buffer
	full := Snapshot{Services: []Service{{Name: "x", State: "running", Exits: 1, StartTime: time.Unix(1, 0)}}, Plugin: &Plugin{}}
	if err := Write(&b, full); err != nil {
		t.Fatal(err)
	}
	fams := metricstest.Parse(t, b.String())
	files, _ := filepath.Glob("../../contrib/prometheus/*.yml")
	if len(files) == 0 {
		t.Fatal("no contrib/prometheus/*.yml")
	}
	used := 0
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`\bhb_[a-z_]+`).FindAllString(string(text), -1) {
			used++
			base := name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suf); ok && fams[b] != nil && fams[b].GetType() == dto.MetricType_HISTOGRAM {
					base = b
				}
			}
			if fams[base] == nil {
				t.Errorf("%s uses %s, which hbd does not write", f, name)
			}
		}
	}
	if used == 0 {
		t.Error("the contrib rules use no hb_ metric")
	}
}

// BenchmarkWrite1000 is one scrape of 1000 services.
func BenchmarkWrite1000(b *testing.B) {
	s := Snapshot{Version: "v1", GoVersion: "go1", Plugin: &Plugin{Pidfd: true}}
	for i := range 1000 {
		s.Services = append(s.Services, Service{Name: fmt.Sprintf("svc-%d", i), State: "running", Up: true, Exits: 3, StartTime: time.Unix(1765000000, 0)})
	}
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := Write(&buf, s); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "bytes/scrape")
}
