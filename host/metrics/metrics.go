// Package metrics writes hb's metrics in the Prometheus text exposition
// format, version 0.0.4: what hbd serves at GET /metrics on its control
// socket and, with [hbd] metrics_listen, on a TCP address.
//
// The format is written by hand with the standard library rather than with
// the Prometheus client library: hb's metric set is small and fixed, every
// value is a snapshot hbd already holds (its services' state) or receives
// from the plugin (a counter or a histogram's buckets, over gRPC), so a
// registry of live collectors would only be used as a formatter; and the
// client library would bring about eight more modules into a root process
// for that. The output is checked in the tests with the Prometheus text
// parser itself.
//
// Names follow Prometheus's naming rules: the hb_ prefix, base units
// (seconds), _total for counters, _seconds for timestamps and durations.
// The only labels are the service's name (at most the table's slot count)
// and fixed enumerations: never a PID or an exit status.
package metrics

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/plugin"
)

// ContentType is the Content-Type of the text exposition format, 0.0.4.
const ContentType = api.MetricsContentType

// States are the values of hb_service_state's state label, one series per
// state for every service (1 for the current one), as node_exporter's
// systemd collector does.
var States = []string{"stopped", "starting", "running", "backoff", "exited", "fatal", "stopping", "hung"}

// Service is one service's numbers.
type Service struct {
	Name  string
	State string // one of States
	// Up: the service has a process and its PID is in its slot (what a
	// peer's one load sees as alive).
	Up bool
	// Restarts counts the spawns after the first (Generation - 1): every
	// respawn and every start after a stop.
	Restarts uint64
	Exits    uint64
	// LastExitStatus is the last exit's status (code, or 128 + signal);
	// written only when Exits > 0.
	LastExitStatus int
	// StartTime is the current incarnation's spawn time; zero when it has
	// no process or hbd does not know it (adopted).
	StartTime time.Time
}

// Plugin is what the plugin reported (plugin.Info).
type Plugin struct {
	Kill, Tracepoint, Connector, Pidfd bool
	plugin.Metrics
}

// Snapshot is everything one scrape writes.
type Snapshot struct {
	Version   string // hbd's build version
	GoVersion string
	Services  []Service
	// Plugin is nil when the plugin did not answer: hb_plugin_up is 0 and
	// the plugin's series are left out.
	Plugin *Plugin
	// EventsMissed counts plugin events hbd never received (gaps in the
	// event stream's sequence), for which it reconciled with the table.
	EventsMissed uint64
}

// Write writes s in the text format.
func Write(w io.Writer, s Snapshot) error {
	b := bufio.NewWriter(w)
	e := &enc{w: b}

	e.family("hb_build_info", "gauge", "hbd's build: version and Go version; always 1.")
	e.sample("hb_build_info", labels("version", s.Version, "goversion", s.GoVersion), 1)

	e.family("hb_service_up", "gauge", "1 when the service's PID is in its slot (peers read it alive), else 0.")
	for _, sv := range s.Services {
		e.sample("hb_service_up", labels("service", sv.Name), b2f(sv.Up))
	}
	e.family("hb_service_state", "gauge", "The service's state: 1 for the current one, 0 for the others.")
	for _, sv := range s.Services {
		for _, st := range States {
			e.sample("hb_service_state", labels("service", sv.Name, "state", st), b2f(sv.State == st))
		}
	}
	e.family("hb_service_restarts_total", "counter", "Spawns of the service after its first (respawns and starts after a stop).")
	for _, sv := range s.Services {
		e.sample("hb_service_restarts_total", labels("service", sv.Name), float64(sv.Restarts))
	}
	e.family("hb_service_exits_total", "counter", "Exits of the service's processes.")
	for _, sv := range s.Services {
		e.sample("hb_service_exits_total", labels("service", sv.Name), float64(sv.Exits))
	}
	e.family("hb_service_last_exit_status", "gauge", "The last exit's status: the exit code, or 128 + the signal number; absent before the first exit.")
	for _, sv := range s.Services {
		if sv.Exits > 0 {
			e.sample("hb_service_last_exit_status", labels("service", sv.Name), float64(sv.LastExitStatus))
		}
	}
	e.family("hb_service_start_time_seconds", "gauge", "When the running process was spawned, in seconds since the Unix epoch; absent without a process.")
	for _, sv := range s.Services {
		if !sv.StartTime.IsZero() {
			e.sample("hb_service_start_time_seconds", labels("service", sv.Name), float64(sv.StartTime.Unix())+float64(sv.StartTime.Nanosecond())/1e9)
		}
	}

	e.family("hb_plugin_up", "gauge", "1 when hbd's plugin (the table's writer) answered this scrape, else 0.")
	e.sample("hb_plugin_up", "", b2f(s.Plugin != nil))
	e.family("hb_events_missed_total", "counter", "Plugin events hbd never received, for which it reconciled its state with the table.")
	e.sample("hb_events_missed_total", "", float64(s.EventsMissed))
	if p := s.Plugin; p != nil {
		e.family("hb_detector_active", "gauge", "1 for each exit detector the plugin uses: SIGKILLs at delivery (eBPF), the exit tracepoint (eBPF), the proc connector, pidfds.")
		e.sample("hb_detector_active", labels("detector", "kill"), b2f(p.Kill))
		e.sample("hb_detector_active", labels("detector", "tracepoint"), b2f(p.Tracepoint))
		e.sample("hb_detector_active", labels("detector", "connector"), b2f(p.Connector))
		e.sample("hb_detector_active", labels("detector", "pidfd"), b2f(p.Pidfd))
		e.family("hb_connector_resyncs_total", "counter", "Proc connector overflows (ENOBUFS) since the plugin started, each followed by a rescan of every pidfd.")
		e.sample("hb_connector_resyncs_total", "", float64(p.Resyncs))
		e.family("hb_plugin_subscribers_dropped_total", "counter", "Event subscribers (hbd) the plugin dropped for falling behind since it started.")
		e.sample("hb_plugin_subscribers_dropped_total", "", float64(p.SubscribersDropped))
		e.histogram("hb_exit_detect_to_store_seconds", "From an exit's detection to the store of 0 in its slot, as the plugin measures it.", p.DetectToStore)
		e.histogram("hb_respawn_seconds", "From an exit's detection (a SIGKILL's, when seen at the kill) to the replacement the plugin spawned itself, as the plugin measures it.", p.Respawn)
	}
	if e.err != nil {
		return e.err
	}
	return b.Flush()
}

type enc struct {
	w   *bufio.Writer
	err error
}

func (e *enc) put(ss ...string) {
	for _, s := range ss {
		if e.err == nil {
			_, e.err = e.w.WriteString(s)
		}
	}
}

func (e *enc) family(name, typ, help string) {
	e.put("# HELP ", name, " ", escapeHelp(help), "\n# TYPE ", name, " ", typ, "\n")
}

func (e *enc) sample(name, lbls string, v float64) {
	e.put(name, lbls, " ", formatFloat(v), "\n")
}

// histogram writes h (bounds in ns, counts per bucket) with cumulative
// buckets in seconds, the +Inf bucket equal to _count.
func (e *enc) histogram(name, help string, h plugin.Histogram) {
	e.family(name, "histogram", help)
	var cum uint64
	for i, b := range h.BoundsNs {
		cum += h.Counts[i]
		e.sample(name+"_bucket", labels("le", formatFloat(float64(b)/1e9)), float64(cum))
	}
	count := max(h.Count, cum)
	e.sample(name+"_bucket", labels("le", "+Inf"), float64(count))
	e.sample(name+"_sum", "", float64(h.SumNs)/1e9)
	e.sample(name+"_count", "", float64(count))
}

// labels is {k1="v1",k2="v2"} for pairs k1, v1, k2, v2.
func labels(kv ...string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv[i])
		b.WriteString(`="`)
		b.WriteString(escapeLabel(kv[i+1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
