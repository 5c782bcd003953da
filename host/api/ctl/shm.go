package ctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hbshim/hb/shm"
)

// shmView is the JSON of `hbctl shm --json`.
type shmView struct {
	Path   string     `json:"path"`
	Header shmHeader  `json:"header"`
	Slots  []shmSlot  `json:"slots"`
	Writer writerView `json:"writer"`
}

type shmHeader struct {
	Version      uint32 `json:"version"`
	SlotCount    uint32 `json:"slot_count"`
	WriterPID    uint32 `json:"writer_pid"`
	Flags        uint32 `json:"flags"`
	CreatedNs    uint64 `json:"created_ns"`
	WriterBeatNs uint64 `json:"writer_beat_ns"`
	LayoutSeq    uint64 `json:"layout_seq"`
	WriterAlive  uint32 `json:"writer_alive"`
	Changes      uint32 `json:"changes"`
}

// writerView is what hbctl makes of the header's writer fields.
type writerView struct {
	// Status is "alive", "stalled" (the process exists but has not beaten
	// for staleBeat: stopped, hung or starved), "gone" (writer_pid names no
	// process), or "stopped" (writer_pid 0: clean shutdown).
	Status string `json:"status"`
	// BeatAgeMs is how long ago the writer last beat (it beats every
	// second); -1 if it never did.
	BeatAgeMs int64 `json:"beat_age_ms"`
	// Alive is what the writer_alive word says (the kernel marks it when
	// the writer dies): "alive", "died", or "none" (0: a clean shutdown,
	// or a new writer that has not validated the slots yet).
	Alive      string `json:"alive"`
	Tracepoint bool   `json:"tracepoint"`
	Connector  bool   `json:"connector"`
	Pidfd      bool   `json:"pidfd"`
}

type shmSlot struct {
	Index      int    `json:"index"`
	Name       string `json:"name"`
	PID        uint32 `json:"pid"`
	State      string `json:"state"`
	Flags      uint32 `json:"flags"`
	Adopted    bool   `json:"adopted"`
	Generation uint64 `json:"generation"`
	StartTime  uint64 `json:"start_time"`
	ChangedNs  uint64 `json:"changed_ns"`
	Exits      uint64 `json:"exits"`
	LastStatus int32  `json:"last_status"`
	LastPID    uint32 `json:"last_pid"`
	LastExitNs uint64 `json:"last_exit_ns"`
}

func runShm(_ context.Context, c *cli, args []string) int {
	var t *shm.Table
	var err error
	name := c.shmTableName()
	if c.o.shmPath != "" {
		t, err = shm.OpenPath(c.o.shmPath)
	} else {
		t, err = shm.Open(name)
	}
	if err != nil {
		fmt.Fprintf(c.Stderr, "hbctl: %v\n", err) // shm errors start with "shm: "
		if errors.Is(err, fs.ErrNotExist) && c.o.shmPath == "" {
			fmt.Fprintf(c.Stderr, "hbctl: no table by that name: is hbd running with shm = %q? set --name or HB_SHM\n", name)
		}
		return ExitFailed
	}
	defer t.Close()

	rc := ExitOK
	var slots []shm.Slot
	if len(args) == 0 {
		for s := range t.Used() {
			slots = append(slots, s)
		}
	}
	for _, n := range args {
		i, err := t.Lookup(n)
		if err != nil {
			fmt.Fprintf(c.Stderr, "hbctl: shm: no slot for service %q in %s\n", n, t.Path())
			rc = ExitFailed
			continue
		}
		slots = append(slots, t.Snapshot(i))
	}

	h := t.Header()
	now := shm.MonotonicNs()
	v := shmView{
		Path: t.Path(),
		Header: shmHeader{Version: h.Version, SlotCount: h.SlotCount, WriterPID: h.WriterPID, Flags: h.Flags,
			CreatedNs: h.CreatedNs, WriterBeatNs: h.WriterBeatNs, LayoutSeq: h.LayoutSeq, WriterAlive: h.WriterAlive, Changes: h.Changes},
		Writer: writerView{Status: writerStatus(h.WriterPID, h.WriterBeatNs, now), BeatAgeMs: -1, Alive: aliveWord(h.WriterAlive),
			Tracepoint: h.Flags&shm.FlagTracepoint != 0, Connector: h.Flags&shm.FlagConnector != 0, Pidfd: h.Flags&shm.FlagPidfd != 0},
		Slots: []shmSlot{},
	}
	if h.WriterBeatNs != 0 {
		v.Writer.BeatAgeMs = beatAge(now, h.WriterBeatNs).Milliseconds()
	}
	for _, s := range slots {
		v.Slots = append(v.Slots, shmSlot{Index: s.Index, Name: s.Name, PID: s.PID, State: s.State.String(),
			Flags: s.Flags, Adopted: s.Flags&shm.SlotAdopted != 0, Generation: s.Generation, StartTime: s.StartTime,
			ChangedNs: s.ChangedNs, Exits: s.Exits, LastStatus: s.LastStatus, LastPID: s.LastPID, LastExitNs: s.LastExitNs})
	}
	if c.o.json {
		writeJSON(c.Stdout, v)
		return rc
	}

	var det []string
	if v.Writer.Tracepoint {
		det = append(det, "tracepoint")
	}
	if v.Writer.Connector {
		det = append(det, "connector")
	}
	if v.Writer.Pidfd {
		det = append(det, "pidfd")
	}
	if len(det) == 0 {
		det = append(det, "none")
	}
	writer := fmt.Sprintf("writer pid %d (%s", h.WriterPID, v.Writer.Status)
	if h.WriterPID == 0 {
		writer = "writer stopped cleanly (pid 0"
	}
	if h.WriterBeatNs != 0 {
		writer += fmt.Sprintf(", last beat %s ago", roundDuration(beatAge(now, h.WriterBeatNs)))
	}
	writer += fmt.Sprintf("; writer_alive %#x: %s", h.WriterAlive, v.Writer.Alive)
	writer += ")"
	created := time.Unix(0, int64(h.CreatedNs)).Local().Format("2006-01-02 15:04:05")
	fmt.Fprintf(c.Stdout, "%s: ABI v%d, %d slots, %s, detectors %s, created %s, layout_seq %d, changes %d\n",
		t.Path(), h.Version, h.SlotCount, writer, strings.Join(det, "+"), created, h.LayoutSeq, h.Changes)

	tw := newTable(c.Stdout)
	fmt.Fprintln(tw, "SLOT\tNAME\tPID\tSTATE\tGEN\tEXITS\tLAST\tCHANGED\tFLAGS")
	for _, s := range slots {
		pid := "0"
		if s.PID != 0 {
			pid = fmt.Sprint(s.PID)
		}
		changed := "-"
		if s.ChangedNs != 0 {
			changed = roundDuration(beatAge(now, s.ChangedNs)).String() + " ago"
		}
		flags := ""
		if s.Flags&shm.SlotAdopted != 0 {
			flags = "adopted"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s.Index, s.Name, pid, s.State, s.Generation, s.Exits,
			lastStatus(s.Exits, int(s.LastStatus)), changed, flags)
	}
	tw.Flush()
	return rc
}

// aliveWord names what a writer_alive value says.
func aliveWord(v uint32) string {
	switch {
	case shm.WriterAliveWord(v):
		return "alive"
	case v == 0:
		return "none"
	default:
		return "died"
	}
}

// beatAge is now-then for CLOCK_MONOTONIC nanoseconds, 0 if then is in the future.
func beatAge(now, then uint64) time.Duration {
	if then == 0 || then > now {
		return 0
	}
	return time.Duration(now - then)
}

// staleBeat is how old writer_beat_ns may be before hbctl calls a writer
// stalled: three of the writer's one-second beats.
const staleBeat = 3 * time.Second

// writerStatus tells whether the writer process named by the header exists
// and still beats (beatNs is its last beat, now the current CLOCK_MONOTONIC;
// a writer that never beat is judged by its process alone).
func writerStatus(pid uint32, beatNs, now uint64) string {
	if pid == 0 {
		return "stopped"
	}
	if err := unix.Kill(int(pid), 0); err != nil && !errors.Is(err, unix.EPERM) {
		return "gone"
	}
	if beatNs != 0 && beatAge(now, beatNs) > staleBeat {
		return "stalled"
	}
	return "alive"
}
