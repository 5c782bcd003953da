package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hbpb "github.com/hbshim/hb/plugin/proto"
	"github.com/hbshim/hb/shm"
)

func TestConvertRoundTrip(t *testing.T) {
	spec := Spec{
		Name: "rx", Command: []string{"/bin/rx", "-v"}, Dir: "/srv", Env: []string{"A=1", "B=2"},
		UID: -1, GID: 4294967294, Groups: []int{10, 20}, Stdout: "file", Stderr: "inherit",
		LogDir: "/var/log/hb", LogMaxBytes: 1 << 40, LogBackups: 7, RunningAtSpawn: true,
		Watchdog: 20 * time.Millisecond, WatchdogSignal: syscall.SIGQUIT, WatchdogGrace: 3 * time.Second,
		Respawn: Respawn{Enabled: true, OnFailure: true, ExitCodes: []int{0, 2}, StartWindow: 1500 * time.Millisecond},
	}
	if diff := cmp.Diff(spec, specFromProto(specToProto(spec))); diff != "" {
		t.Errorf("Spec (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Spec{UID: -1, GID: -1}, specFromProto(specToProto(Spec{UID: -1, GID: -1})), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("empty Spec (-want +got):\n%s", diff)
	}
	res := SpawnResult{Slot: 1023, PID: 4194304, Generation: 1<<63 + 1, StartTime: 123456789}
	if diff := cmp.Diff(res, spawnResultFromProto(spawnResultToProto(res))); diff != "" {
		t.Errorf("SpawnResult (-want +got):\n%s", diff)
	}
	info := Info{PID: 7, ShmName: "hb", Slots: 1024, Tracepoint: true, Connector: true, Pidfd: true, Adopted: 3, LastSeq: 99, Version: "v1", FeatureVersion: 7, DetectorPriority: 2,
		KillTracepoint: true, KillNote: "SIGKILLs are seen at the exit, not at the kill (no BTF)",
		Metrics: Metrics{Resyncs: 4, SubscribersDropped: 1,
			DetectToStore: Histogram{BoundsNs: []uint64{1000, 2000}, Counts: []uint64{3, 0}, Count: 5, SumNs: 9000},
			Respawn:       Histogram{BoundsNs: []uint64{1e6}, Counts: []uint64{1}, Count: 1, SumNs: 5e5}}}
	if diff := cmp.Diff(info, infoFromProto(infoToProto(info))); diff != "" {
		t.Errorf("Info (-want +got):\n%s", diff)
	}
	// A plugin from before feature_version sent its feature version as its version.
	bad := &hbpb.InfoResponse{Metrics: &hbpb.Metrics{Respawn: &hbpb.Histogram{BoundsNs: []uint64{1, 2}, Counts: []uint64{1}}}}
	if got := infoFromProto(bad).Metrics.Respawn; got.Count != 0 || got.BoundsNs != nil {
		t.Errorf("a histogram with fewer counts than bounds is kept: %+v", got)
	}
	if got := infoFromProto(&hbpb.InfoResponse{Version: "2"}); got.FeatureVersion != FeatureRunningAtSpawn {
		t.Errorf("an old plugin's version \"2\" read as feature version %d, want %d", got.FeatureVersion, FeatureRunningAtSpawn)
	}
	slot := shm.Slot{
		Index: 5, PID: 4194304, State: shm.StateStopping, Flags: shm.SlotAdopted, Generation: 9, StartTime: 10,
		ChangedNs: 11, Exits: 12, LastStatus: -1, LastPID: 13, LastExitNs: 14, Name: "tx.0",
	}
	if diff := cmp.Diff(slot, slotFromProto(slotToProto(slot))); diff != "" {
		t.Errorf("Slot (-want +got):\n%s", diff)
	}
	for _, ev := range []Event{
		{Seq: 1, Kind: EventSpawn, Name: "a", Slot: 2, PID: 3, Generation: 4, Status: -1, DetectedNs: 5, TimeUnixNs: -6},
		{Seq: 2, Kind: EventExit, Name: "a", PID: 3, Status: 137, Source: "connector", Adopted: true},
		{Seq: 3, Kind: EventAdopt, Name: "b", Source: "adopt"},
		{Seq: 4, Kind: EventHung, Name: "c", PID: 9, SinceBeatNs: 21_000_000},
		{Seq: 5, Kind: EventExit, Name: "c", PID: 9, Status: 134, Reason: "watchdog"},
		{Seq: 6, Kind: EventManager, Name: "d", Manager: "runit", Message: "runsv exited"},
		{Seq: 7, Kind: EventSpawn, Name: "d", PID: 10, Manager: "supervisord", Adopted: true, Source: "bridge"},
	} {
		if diff := cmp.Diff(ev, eventFromProto(eventToProto(ev))); diff != "" {
			t.Errorf("Event %d (-want +got):\n%s", ev.Seq, diff)
		}
	}
}

// TestBridgeSpecWire: every BridgeSpec field crosses the wire.
func TestBridgeSpecWire(t *testing.T) {
	specs := []BridgeSpec{
		{Name: "a", Manager: "runit", Dir: "/etc/service/a"},
		{Name: "w1", Manager: "supervisord", URL: "unix:///run/supervisor.sock", Process: "pool:w1"},
		{Manager: "s6", Dir: "/run/service", All: true},
	}
	if diff := cmp.Diff(specs, bridgeFromProto(bridgeToProto(specs))); diff != "" {
		t.Errorf("BridgeSpec (-want +got):\n%s", diff)
	}
}

// toStatus and fromStatus, without a process in between.
func TestStatusMapping(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		want     error // sentinel the client matches; nil: none
		remote   bool  // a *RemoteError carrying the plugin's message
		contains string
	}{
		{"not found", fmt.Errorf("shim: stop %q: %w", "rx", ErrNotFound), codes.NotFound, ErrNotFound, true, `shim: stop "rx": unknown service`},
		{"running", fmt.Errorf("x: %w", ErrRunning), codes.FailedPrecondition, ErrRunning, true, "x: service is running"},
		{"not running", fmt.Errorf("x: %w", ErrNotRunning), codes.FailedPrecondition, ErrNotRunning, true, "x: service is not running"},
		{"full", fmt.Errorf("x: %w", ErrFull), codes.ResourceExhausted, ErrFull, true, "x: slot table is full"},
		{"bad spec", fmt.Errorf("x: %w", ErrBadSpec), codes.InvalidArgument, ErrBadSpec, true, "x: invalid spec"},
		{"shutdown", fmt.Errorf("x: %w", ErrShutdown), codes.Unavailable, ErrShutdown, true, "x: plugin is shutting down"},
		{"shm full", fmt.Errorf("shm: alloc: %w", shm.ErrFull), codes.ResourceExhausted, ErrFull, true, "table full"},
		{"shm not found", fmt.Errorf("shm: %w", shm.ErrNotFound), codes.NotFound, ErrNotFound, true, "service not in table"},
		{"shm bad name", shm.ValidName(""), codes.InvalidArgument, ErrBadSpec, true, "invalid name"},
		{"plain", errors.New("disk on fire"), codes.Unknown, nil, true, "disk on fire"},
		{"deadline", fmt.Errorf("stop: %w", context.DeadlineExceeded), codes.DeadlineExceeded, context.DeadlineExceeded, false, "stop: context deadline exceeded"},
		{"canceled", context.Canceled, codes.Canceled, context.Canceled, false, "context canceled"},
		{"transport", status.Error(codes.Unavailable, "connection refused"), codes.Unavailable, ErrUnavailable, false, "connection refused"},
		{"bare NotFound status", status.Error(codes.NotFound, "gone"), codes.NotFound, ErrNotFound, true, "gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire := toStatus(tt.err)
			if got := status.Code(wire); got != tt.code {
				t.Errorf("code = %v, want %v", got, tt.code)
			}
			back := fromStatus("Test", wire)
			if tt.want != nil && !errors.Is(back, tt.want) {
				t.Errorf("errors.Is(%q, %q) = false", back, tt.want)
			}
			for _, s := range Sentinels {
				if s != tt.want && errors.Is(back, s) {
					t.Errorf("errors.Is(%q, %q) = true, want false", back, s)
				}
			}
			var re *RemoteError
			if got := errors.As(back, &re); got != tt.remote {
				t.Errorf("is *RemoteError = %v, want %v (%T)", got, tt.remote, back)
			}
			if re != nil && re.Msg != tt.err.Error() && status.Convert(tt.err).Message() != re.Msg {
				t.Errorf("message = %q, want the plugin's %q", re.Msg, tt.err.Error())
			}
			if got := back.Error(); !strings.Contains(got, tt.contains) {
				t.Errorf("Error() = %q, want it to contain %q", got, tt.contains)
			}
		})
	}
	if toStatus(nil) != nil || fromStatus("Test", nil) != nil {
		t.Error("nil error not passed through")
	}
}
