package plugin

import (
	"strconv"
	"syscall"
	"time"

	hbpb "github.com/hbshim/hb/plugin/proto"
	"github.com/hbshim/hb/shm"
)

// Conversions between the Go contract (types.go) and the wire messages. Each
// pair is the identity on every field; the tests round-trip them.

func specToProto(s Spec) *hbpb.Spec {
	groups := make([]int64, len(s.Groups))
	for i, g := range s.Groups {
		groups[i] = int64(g)
	}
	return &hbpb.Spec{
		Name:          s.Name,
		Command:       s.Command,
		Dir:           s.Dir,
		Env:           s.Env,
		Uid:           int64(s.UID),
		Gid:           int64(s.GID),
		Groups:        groups,
		Stdout:        s.Stdout,
		Stderr:        s.Stderr,
		LogDir:        s.LogDir,
		LogMaxBytes:   s.LogMaxBytes,
		LogBackups:    int64(s.LogBackups),
		LogTimestamps: s.LogTimestamps,
		LogDirect:     s.LogDirect,
		Respawn: &hbpb.Respawn{
			Enabled:     s.Respawn.Enabled,
			OnFailure:   s.Respawn.OnFailure,
			ExitCodes:   toInt64s(s.Respawn.ExitCodes),
			StartSecsNs: int64(s.Respawn.StartWindow),
		},
		RunningAtSpawn:  s.RunningAtSpawn,
		WatchdogNs:      int64(s.Watchdog),
		WatchdogSignal:  int32(s.WatchdogSignal),
		WatchdogGraceNs: int64(s.WatchdogGrace),
		Ready:           s.Ready,
		ReadyTimeoutNs:  int64(s.ReadyTimeout),
		KillMode:        s.KillMode,
		Type:            s.Type,
		PidFile:         s.PIDFile,
		Cpus:            toInt64s(s.CPUs),
		SetNice:         s.SetNice,
		Nice:            int64(s.Nice),
		SetSched:        s.SetSched,
		SchedPolicy:     int64(s.SchedPolicy),
		SchedPriority:   int64(s.SchedPriority),
		Rlimits:         rlimitsToProto(s.Rlimits),
		SetUmask:        s.SetUmask,
		Umask:           int64(s.Umask),
		MemoryMax:       s.MemoryMax,
		PidsMax:         s.PidsMax,
		CpuWeight:       int64(s.CPUWeight),
	}
}

func toInt64s(v []int) []int64 {
	if v == nil {
		return nil
	}
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

func fromInt64s(v []int64) []int {
	if len(v) == 0 {
		return nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

func specFromProto(p *hbpb.Spec) Spec {
	var groups []int
	if len(p.GetGroups()) > 0 {
		groups = make([]int, len(p.GetGroups()))
		for i, g := range p.GetGroups() {
			groups[i] = int(g)
		}
	}
	return Spec{
		Name:          p.GetName(),
		Command:       p.GetCommand(),
		Dir:           p.GetDir(),
		Env:           p.GetEnv(),
		UID:           int(p.GetUid()),
		GID:           int(p.GetGid()),
		Groups:        groups,
		Stdout:        p.GetStdout(),
		Stderr:        p.GetStderr(),
		LogDir:        p.GetLogDir(),
		LogMaxBytes:   p.GetLogMaxBytes(),
		LogBackups:    int(p.GetLogBackups()),
		LogTimestamps: p.GetLogTimestamps(),
		LogDirect:     p.GetLogDirect(),
		Respawn: Respawn{
			Enabled:     p.GetRespawn().GetEnabled(),
			OnFailure:   p.GetRespawn().GetOnFailure(),
			ExitCodes:   fromInt64s(p.GetRespawn().GetExitCodes()),
			StartWindow: time.Duration(p.GetRespawn().GetStartSecsNs()),
		},
		RunningAtSpawn: p.GetRunningAtSpawn(),
		Watchdog:       time.Duration(p.GetWatchdogNs()),
		WatchdogSignal: syscall.Signal(p.GetWatchdogSignal()),
		WatchdogGrace:  time.Duration(p.GetWatchdogGraceNs()),
		Ready:          p.GetReady(),
		ReadyTimeout:   time.Duration(p.GetReadyTimeoutNs()),
		KillMode:       p.GetKillMode(),
		Type:           p.GetType(),
		PIDFile:        p.GetPidFile(),
		CPUs:           fromInt64s(p.GetCpus()),
		SetNice:        p.GetSetNice(),
		Nice:           int(p.GetNice()),
		SetSched:       p.GetSetSched(),
		SchedPolicy:    int(p.GetSchedPolicy()),
		SchedPriority:  int(p.GetSchedPriority()),
		Rlimits:        rlimitsFromProto(p.GetRlimits()),
		SetUmask:       p.GetSetUmask(),
		Umask:          int(p.GetUmask()),
		MemoryMax:      p.GetMemoryMax(),
		PidsMax:        p.GetPidsMax(),
		CPUWeight:      int(p.GetCpuWeight()),
	}
}

func spawnResultToProto(r SpawnResult) *hbpb.SpawnResponse {
	return &hbpb.SpawnResponse{
		Slot:       int64(r.Slot),
		Pid:        int64(r.PID),
		Generation: r.Generation,
		StartTime:  r.StartTime,
		LogPipes:   logPipesToProto(r.LogPipes),
	}
}

func spawnResultFromProto(p *hbpb.SpawnResponse) SpawnResult {
	return SpawnResult{
		Slot:       int(p.GetSlot()),
		PID:        int(p.GetPid()),
		Generation: p.GetGeneration(),
		StartTime:  p.GetStartTime(),
		LogPipes:   logPipesFromProto(p.GetLogPipes()),
	}
}

func logPipesToProto(ps []LogPipe) []*hbpb.LogPipe {
	var out []*hbpb.LogPipe
	for _, p := range ps {
		out = append(out, &hbpb.LogPipe{Name: p.Name, Stream: p.Stream, ReadFd: int64(p.ReadFD), WriteFd: int64(p.WriteFD), Ino: p.Ino})
	}
	return out
}

func logPipesFromProto(ps []*hbpb.LogPipe) []LogPipe {
	var out []LogPipe
	for _, p := range ps {
		out = append(out, LogPipe{Name: p.GetName(), Stream: p.GetStream(), ReadFD: int(p.GetReadFd()), WriteFD: int(p.GetWriteFd()), Ino: p.GetIno()})
	}
	return out
}

func infoToProto(i Info) *hbpb.InfoResponse {
	return &hbpb.InfoResponse{
		Pid:        int64(i.PID),
		ShmName:    i.ShmName,
		Slots:      int64(i.Slots),
		Connector:  i.Connector,
		Pidfd:      i.Pidfd,
		Tracepoint: i.Tracepoint,
		Adopted:    int64(i.Adopted),

		DetectorPriority: int64(i.DetectorPriority),
		LastSeq:          i.LastSeq,
		Version:          i.Version,
		FeatureVersion:   uint32(i.FeatureVersion),
		ShmRepairs:       i.ShmRepairs,
		ShmProblem:       i.ShmProblem,
		Cgroups:          i.Cgroups,
		ConnectorNote:    i.ConnectorNote,
		KillTracepoint:   i.KillTracepoint,
		KillNote:         i.KillNote,
		LogPipes:         logPipesToProto(i.LogPipes),
		Metrics: &hbpb.Metrics{
			Resyncs:            i.Metrics.Resyncs,
			SubscribersDropped: i.Metrics.SubscribersDropped,
			DetectToStore:      histogramToProto(i.Metrics.DetectToStore),
			Respawn:            histogramToProto(i.Metrics.Respawn),
		},
	}
}

func histogramToProto(h Histogram) *hbpb.Histogram {
	return &hbpb.Histogram{BoundsNs: h.BoundsNs, Counts: h.Counts, Count: h.Count, SumNs: h.SumNs}
}

// histogramFromProto drops a histogram whose counts do not match its bounds.
func histogramFromProto(p *hbpb.Histogram) Histogram {
	if p == nil || len(p.GetCounts()) != len(p.GetBoundsNs()) {
		return Histogram{}
	}
	return Histogram{BoundsNs: p.GetBoundsNs(), Counts: p.GetCounts(), Count: p.GetCount(), SumNs: p.GetSumNs()}
}

func infoFromProto(p *hbpb.InfoResponse) Info {
	return Info{
		PID:        int(p.GetPid()),
		ShmName:    p.GetShmName(),
		Slots:      int(p.GetSlots()),
		Connector:  p.GetConnector(),
		Pidfd:      p.GetPidfd(),
		Tracepoint: p.GetTracepoint(),
		Adopted:    int(p.GetAdopted()),

		DetectorPriority: int(p.GetDetectorPriority()),
		LastSeq:          p.GetLastSeq(),
		Version:          p.GetVersion(),
		FeatureVersion:   featureVersion(p),
		ShmRepairs:       p.GetShmRepairs(),
		ShmProblem:       p.GetShmProblem(),
		Cgroups:          p.GetCgroups(),
		ConnectorNote:    p.GetConnectorNote(),
		KillTracepoint:   p.GetKillTracepoint(),
		KillNote:         p.GetKillNote(),
		LogPipes:         logPipesFromProto(p.GetLogPipes()),
		Metrics: Metrics{
			Resyncs:            p.GetMetrics().GetResyncs(),
			SubscribersDropped: p.GetMetrics().GetSubscribersDropped(),
			DetectToStore:      histogramFromProto(p.GetMetrics().GetDetectToStore()),
			Respawn:            histogramFromProto(p.GetMetrics().GetRespawn()),
		},
	}
}

// featureVersion is p's feature version; a plugin from before the field
// sent it, in decimal, as its version (and had no build version there).
func featureVersion(p *hbpb.InfoResponse) int {
	if v := p.GetFeatureVersion(); v != 0 {
		return int(v)
	}
	v, err := strconv.Atoi(p.GetVersion())
	if err != nil || v < 0 {
		return 0
	}
	return v
}

func slotToProto(s shm.Slot) *hbpb.Slot {
	return &hbpb.Slot{
		Index:      int64(s.Index),
		Pid:        s.PID,
		State:      hbpb.ServiceState(s.State),
		Flags:      s.Flags,
		Generation: s.Generation,
		StartTime:  s.StartTime,
		ChangedNs:  s.ChangedNs,
		Exits:      s.Exits,
		LastStatus: s.LastStatus,
		LastPid:    s.LastPID,
		LastExitNs: s.LastExitNs,
		Name:       s.Name,
	}
}

func slotFromProto(p *hbpb.Slot) shm.Slot {
	return shm.Slot{
		Index:      int(p.GetIndex()),
		PID:        p.GetPid(),
		State:      shm.State(p.GetState()),
		Flags:      p.GetFlags(),
		Generation: p.GetGeneration(),
		StartTime:  p.GetStartTime(),
		ChangedNs:  p.GetChangedNs(),
		Exits:      p.GetExits(),
		LastStatus: p.GetLastStatus(),
		LastPID:    p.GetLastPid(),
		LastExitNs: p.GetLastExitNs(),
		Name:       p.GetName(),
	}
}

func eventToProto(e Event) *hbpb.Event {
	return &hbpb.Event{
		Seq:         e.Seq,
		Kind:        hbpb.EventKind(e.Kind),
		Name:        e.Name,
		Slot:        int64(e.Slot),
		Pid:         int64(e.PID),
		Generation:  e.Generation,
		Status:      int64(e.Status),
		Source:      e.Source,
		DetectedNs:  e.DetectedNs,
		TimeUnixNs:  e.TimeUnixNs,
		Adopted:     e.Adopted,
		Respawned:   e.Respawned,
		Message:     e.Message,
		Reason:      e.Reason,
		SinceBeatNs: e.SinceBeatNs,
		Manager:     e.Manager,
	}
}

func eventFromProto(p *hbpb.Event) Event {
	return Event{
		Seq:         p.GetSeq(),
		Kind:        EventKind(p.GetKind()),
		Name:        p.GetName(),
		Slot:        int(p.GetSlot()),
		PID:         int(p.GetPid()),
		Generation:  p.GetGeneration(),
		Status:      int(p.GetStatus()),
		Source:      p.GetSource(),
		DetectedNs:  p.GetDetectedNs(),
		TimeUnixNs:  p.GetTimeUnixNs(),
		Adopted:     p.GetAdopted(),
		Respawned:   p.GetRespawned(),
		Message:     p.GetMessage(),
		Reason:      p.GetReason(),
		SinceBeatNs: p.GetSinceBeatNs(),
		Manager:     p.GetManager(),
	}
}

func bridgeToProto(specs []BridgeSpec) []*hbpb.BridgeSpec {
	out := make([]*hbpb.BridgeSpec, len(specs))
	for i, b := range specs {
		out[i] = &hbpb.BridgeSpec{Name: b.Name, Manager: b.Manager, Dir: b.Dir, Url: b.URL, Process: b.Process, All: b.All}
	}
	return out
}

func bridgeFromProto(ps []*hbpb.BridgeSpec) []BridgeSpec {
	out := make([]BridgeSpec, len(ps))
	for i, p := range ps {
		out[i] = BridgeSpec{Name: p.GetName(), Manager: p.GetManager(), Dir: p.GetDir(), URL: p.GetUrl(), Process: p.GetProcess(), All: p.GetAll()}
	}
	return out
}

func rlimitsToProto(v []Rlimit) []*hbpb.Rlimit {
	if v == nil {
		return nil
	}
	out := make([]*hbpb.Rlimit, len(v))
	for i, l := range v {
		out[i] = &hbpb.Rlimit{Resource: int64(l.Resource), Cur: l.Cur, Max: l.Max}
	}
	return out
}

func rlimitsFromProto(v []*hbpb.Rlimit) []Rlimit {
	if len(v) == 0 {
		return nil
	}
	out := make([]Rlimit, len(v))
	for i, l := range v {
		out[i] = Rlimit{Resource: int(l.GetResource()), Cur: l.GetCur(), Max: l.GetMax()}
	}
	return out
}
