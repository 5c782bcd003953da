package bridge

import (
	"encoding/binary"
	"fmt"
)

// Status is what a manager's status record says about one program.
type Status struct {
	// PID is the program's main process while Up; 0 otherwise.
	PID int
	// Up: the program's process runs (not down, not in ./finish).
	Up bool
	// WantUp: the manager means to keep it up (runit "want u", s6 flag).
	WantUp bool
	// Paused: stopped with SIGSTOP through the manager (sv pause, s6-svc -p).
	Paused bool
	// Ready: s6 only, the program signalled readiness (notification-fd).
	Ready bool
	// Finishing: ./finish runs (its PID is not the program's).
	Finishing bool
	// Wstat is s6's last wait status (0 for runit).
	Wstat int
}

// RunitStatusSize is the size of runit's supervise/status.
const RunitStatusSize = 20

// DecodeRunit decodes runit's 20-byte supervise/status (runsv.c
// update_status): TAI64N time of the last change at 0–11, the PID
// little-endian at 12–15, paused at 16, want ('u' or 'd') at 17, got-TERM at
// 18, the state at 19 (0 down, 1 run, 2 finish).
func DecodeRunit(b []byte) (Status, error) {
	if len(b) != RunitStatusSize {
		return Status{}, fmt.Errorf("runit status: %d bytes, want %d", len(b), RunitStatusSize)
	}
	var st Status
	pid := binary.LittleEndian.Uint32(b[12:16])
	switch b[19] {
	case 0:
	case 1:
		st.Up = pid != 0
	case 2:
		st.Finishing = true
	default:
		return Status{}, fmt.Errorf("runit status: state byte %d, want 0 (down), 1 (run) or 2 (finish)", b[19])
	}
	switch b[17] {
	case 'u':
		st.WantUp = true
	case 'd':
	default:
		return Status{}, fmt.Errorf("runit status: want byte %q, want 'u' or 'd'", b[17])
	}
	if st.Up {
		if pid > 1<<22 {
			return Status{}, fmt.Errorf("runit status: pid %d is beyond any PID Linux gives", pid)
		}
		st.PID = int(pid)
	}
	st.Paused = b[16] != 0
	return st, nil
}

// S6 supervise/status sizes: 35 bytes in s6 up to 2.12 and from 2.14 on,
// 43 bytes in 2.13 (which added the process group at 32–39).
const (
	S6StatusSize     = 35
	S6StatusSizePgid = 43
)

// s6 status flags (the last byte).
const (
	s6Paused    = 1 << 0
	s6Finishing = 1 << 1
	s6WantUp    = 1 << 2
	s6Ready     = 1 << 3
)

// DecodeS6 decodes s6's supervise/status (s6_svstatus_unpack): the TAI64N
// stamp of the last change at 0–11, the ready stamp at 12–23, the PID as a
// big-endian u64 at 24–31, then (43-byte form only) the process group at
// 32–39, the wait status (u16 big-endian) and the flags byte.
func DecodeS6(b []byte) (Status, error) {
	var rest []byte
	switch len(b) {
	case S6StatusSize:
		rest = b[32:]
	case S6StatusSizePgid:
		rest = b[40:]
	default:
		return Status{}, fmt.Errorf("s6 status: %d bytes, want %d or %d", len(b), S6StatusSize, S6StatusSizePgid)
	}
	pid := binary.BigEndian.Uint64(b[24:32])
	flags := rest[2]
	if flags&^(s6Paused|s6Finishing|s6WantUp|s6Ready) != 0 {
		return Status{}, fmt.Errorf("s6 status: flags %#02x has bits s6 does not set", flags)
	}
	if pid > 1<<22 {
		return Status{}, fmt.Errorf("s6 status: pid %d is beyond any PID Linux gives", pid)
	}
	st := Status{
		WantUp:    flags&s6WantUp != 0,
		Paused:    flags&s6Paused != 0,
		Finishing: flags&s6Finishing != 0,
		Ready:     flags&s6Ready != 0,
		Wstat:     int(binary.BigEndian.Uint16(rest[0:2])),
	}
	if pid != 0 && !st.Finishing {
		st.Up, st.PID = true, int(pid)
	}
	return st, nil
}

// Decode decodes the status record of manager (Runit or S6).
func Decode(manager string, b []byte) (Status, error) {
	switch manager {
	case Runit:
		return DecodeRunit(b)
	case S6:
		return DecodeS6(b)
	}
	return Status{}, fmt.Errorf("no status record for manager %q", manager)
}
