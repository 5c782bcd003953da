package shm

import (
	"errors"
	"fmt"
	"strconv"
)

// ABI v1 constants. They are part of the on-disk (in-memory) format shared
// with readers in other languages (contrib/c/hb_shm.h) and must not change
// without bumping Version.
const (
	// Version is the ABI version written at header offset 8.
	Version = 1
	// HeaderSize is the size in bytes of the table header; slot 0 starts here.
	HeaderSize = 128
	// SlotSize is the size in bytes of one slot.
	SlotSize = 128
	// NameMax is the longest service name in bytes; the name field holds
	// NameMax bytes plus at least one NUL.
	NameMax = 47
	// DefaultName is the table name used when none is configured (/dev/shm/hb).
	DefaultName = "hb"
	// DefaultSlots is the capacity of a table created with Options.Slots == 0.
	DefaultSlots = 1024
	// MaxSlots bounds Options.Slots (a 128 MiB table).
	MaxSlots = 1 << 20
)

// Magic is the 8-byte signature at offset 0 of every table.
var Magic = [8]byte{'H', 'B', 'S', 'H', 'M', 0, 0, 0}

// Header flags (header offset 28): which exit detectors the writer has running.
const (
	// FlagConnector is set while the proc connector fast path is active.
	FlagConnector uint32 = 1 << 0
	// FlagPidfd is set while the pidfd safety net is active.
	FlagPidfd uint32 = 1 << 1
	// FlagTracepoint is set while the exit tracepoint (eBPF) detector is
	// active. Added within ABI v1: readers ignore bits they do not know.
	FlagTracepoint uint32 = 1 << 2
)

// Slot flags (slot offset 12).
const (
	// SlotAdopted marks a process that the writer adopted from a previous
	// writer; it is not the writer's child.
	SlotAdopted uint32 = 1 << 0
	// SlotBridged marks a program another process manager (supervisord,
	// runit, s6) starts and restarts; the writer only publishes its PID.
	// Added within ABI v1: readers ignore bits they do not know.
	SlotBridged uint32 = 1 << 1
	// SlotManagerGone marks a bridged slot whose manager is not running:
	// the PID word is 0 until the manager is back and names a process.
	SlotManagerGone uint32 = 1 << 2
)

// Byte offsets of the header fields (ABI v1).
const (
	hdrMagic      = 0
	hdrVersion    = 8
	hdrHeaderSize = 12
	hdrSlotSize   = 16
	hdrSlotCount  = 20
	hdrWriterPID  = 24
	hdrFlags      = 28
	hdrCreatedNs  = 32
	hdrBeatNs     = 40
	// Added within v1 in the reserved bytes (zero in older tables).
	hdrLayoutSeq   = 48 // u64: +1 after every slot assignment, release or reuse
	hdrWriterAlive = 56 // u32: robust-futex word, the writer thread's TID while it lives
	hdrChanges     = 60 // u32: +1 (and a futex wake) after every store to a pid word
)

// The writer_alive word (header offset 56). While the writer lives it holds
// the TID of one of its threads, which owns the word as a robust futex: when
// the writer dies, by any means, the kernel sets WriterOwnerDied in it during
// the exit. A clean shutdown stores 0.
const (
	// WriterOwnerDied is FUTEX_OWNER_DIED, set by the kernel (or by a writer
	// closing without a clean shutdown).
	WriterOwnerDied uint32 = 0x40000000
	// writerTIDMask is FUTEX_TID_MASK.
	writerTIDMask uint32 = 0x3fffffff
)

// WriterAliveWord reports whether a writer_alive value means a live writer:
// not zero and WriterOwnerDied clear.
func WriterAliveWord(v uint32) bool { return v != 0 && v&WriterOwnerDied == 0 }

// Byte offsets of the fields inside one slot (ABI v1).
const (
	slPID        = 0
	slState      = 4
	slSeq        = 8
	slFlags      = 12
	slGeneration = 16
	slStartTime  = 24
	slChangedNs  = 32
	slExits      = 40
	slLastStatus = 48
	slLastPID    = 52
	slLastExitNs = 56
	slName       = 64
	slNameLen    = 48 // NameMax + NUL
	slReserved   = 112
	// slReleased (u64, added within v1 in the reserved bytes) is a free
	// slot's memory of the service that last held it: NameHash of its name,
	// 0 for a slot never used. Only the writer uses it (Alloc gives a
	// returning name its old index); readers ignore it.
	slReleased = 112
	nameWords  = slNameLen / 4
)

// State is the lifecycle state stored at slot offset 4. Its numeric values
// are part of the ABI.
type State uint32

// The slot states of ABI v1.
const (
	StateFree     State = 0 // slot unused
	StateStopped  State = 1 // allocated, not running (never started or stopped on purpose)
	StateStarting State = 2 // being spawned
	StateRunning  State = 3 // running; pid != 0 while it lives
	StateBackoff  State = 4 // exited, waiting to be restarted
	StateExited   State = 5 // exited, will not be restarted by policy
	StateFatal    State = 6 // gave up restarting
	StateStopping State = 7 // being stopped on request
	// StateHung: the service missed its watchdog deadline; its PID word was
	// set to 0 at once and the process is being killed.
	StateHung State = 8
)

var stateNames = [...]string{
	StateFree:     "free",
	StateStopped:  "stopped",
	StateStarting: "starting",
	StateRunning:  "running",
	StateBackoff:  "backoff",
	StateExited:   "exited",
	StateFatal:    "fatal",
	StateStopping: "stopping",
	StateHung:     "hung",
}

// String returns the lower-case name of s ("running"), or "state(N)" for a
// value outside ABI v1.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Valid reports whether s is one of the states defined by ABI v1.
func (s State) Valid() bool { return int(s) < len(stateNames) }

// ParseState is the inverse of State.String for the states of ABI v1.
func ParseState(name string) (State, error) {
	for i, n := range stateNames {
		if n == name {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("shm: unknown state %q", name)
}

// Header is a copy of the table header.
type Header struct {
	Version    uint32
	HeaderSize uint32
	SlotSize   uint32
	SlotCount  uint32
	// WriterPID is the writer's process ID; 0 after a clean shutdown.
	WriterPID uint32
	// Flags holds FlagConnector, FlagPidfd and FlagTracepoint.
	Flags uint32
	// CreatedNs is CLOCK_REALTIME when the table was first created (kept on adopt).
	CreatedNs uint64
	// WriterBeatNs is CLOCK_MONOTONIC of the writer's last Beat: a reader can
	// tell the watcher itself is alive if it is recent (the writer beats every second).
	WriterBeatNs uint64
	// LayoutSeq is incremented after every slot assignment, release or
	// reuse: a reader that cached slot indexes looks them up again when,
	// and only when, it changed.
	LayoutSeq uint64
	// WriterAlive is the robust-futex word: the writer thread's TID while
	// the writer lives, WriterOwnerDied set by the kernel when it died, 0
	// after a clean shutdown (WriterAliveWord).
	WriterAlive uint32
	// Changes is incremented after every store to a slot's pid word.
	Changes uint32
}

// Slot is a consistent copy of one slot (see Table.Snapshot).
type Slot struct {
	Index int
	// PID is the running process, 0 if none. The slot is set to 0 before an
	// exit is reported, so a non-zero PID never names a recycled process.
	PID   uint32
	State State
	// Flags holds SlotAdopted.
	Flags uint32
	// Generation counts spawns of this service (+1 at every spawn).
	Generation uint64
	// StartTime is field 22 of /proc/PID/stat (clock ticks since boot),
	// the identity of PID against reuse.
	StartTime uint64
	// ChangedNs is CLOCK_MONOTONIC of the last state change.
	ChangedNs uint64
	// Exits counts the exits seen.
	Exits uint64
	// LastStatus is the last exit code, or 128+signal; -1 if none yet.
	LastStatus int32
	// LastPID is the PID of the last exited incarnation.
	LastPID uint32
	// LastExitNs is CLOCK_MONOTONIC when the PID went to 0 for the last
	// exit: when the SIGKILL was seen, if one was, else when the exit was
	// detected.
	LastExitNs uint64
	// Name is the service name ("" for a free slot).
	Name string
}

// Errors returned (wrapped, with the path or name) by this package. Match them
// with errors.Is.
var (
	ErrSymlink    = errors.New("is a symlink")
	ErrNotRegular = errors.New("not a regular file")
	ErrOwner      = errors.New("owned by another user")
	ErrNoSpace    = errors.New("no space for the table")
	ErrMode       = errors.New("writable by group or others")
	ErrBadMagic   = errors.New("bad magic: not an hb table")
	ErrVersion    = errors.New("unsupported ABI version")
	ErrLayout     = errors.New("bad table layout")
	ErrBusy       = errors.New("locked by another writer")
	ErrFull       = errors.New("table full")
	ErrNotFound   = errors.New("service not in table")
	ErrBadName    = errors.New("invalid name")
	ErrIndex      = errors.New("slot index out of range")
	ErrRunning    = errors.New("slot has a running process")
	ErrClosed     = errors.New("table closed")
)

// NameProblem says what is wrong with service as a service name (1 to
// NameMax bytes of [A-Za-z0-9._-]), or "" when nothing is. It is the one
// rule: hbd's configuration check and the table both use it.
func NameProblem(service string) string {
	switch {
	case service == "":
		return "empty"
	case len(service) > NameMax:
		return fmt.Sprintf("%d bytes long; the limit is %d", len(service), NameMax)
	}
	for i := 0; i < len(service); i++ {
		c := service[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Sprintf("byte %q at offset %d is not allowed (use A-Z a-z 0-9 . _ -)", c, i)
	}
	return ""
}

// ValidName reports whether service is a valid service name (NameProblem).
// The error wraps ErrBadName and names the problem.
func ValidName(service string) error {
	if why := NameProblem(service); why != "" {
		return fmt.Errorf("shm: service name %q: %w: %s", service, ErrBadName, why)
	}
	return nil
}

// nameMaxFS is NAME_MAX, the longest file name in /dev/shm.
const nameMaxFS = 255

// TableNameProblem says what is wrong with name as a table's name in
// /dev/shm, with the rules of shm_open(3) (not empty, no '/', not "." or
// "..", at most NAME_MAX (255) bytes, no NUL), or "" when nothing is.
func TableNameProblem(name string) string {
	switch {
	case name == "":
		return "empty"
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not a file name", name)
	case len(name) > nameMaxFS:
		return fmt.Sprintf("%d bytes long; the limit is %d", len(name), nameMaxFS)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Sprintf("byte %q at offset %d: a table is one file name under /dev/shm", name[i], i)
		}
	}
	return ""
}

// ValidTableName reports whether name can name a table in /dev/shm
// (TableNameProblem). The error wraps ErrBadName.
func ValidTableName(name string) error {
	if why := TableNameProblem(name); why != "" {
		return fmt.Errorf("shm: table name %q: %w: %s", name, ErrBadName, why)
	}
	return nil
}
