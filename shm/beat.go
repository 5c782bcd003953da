package shm

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BeatFDEnv names the environment variable that gives a service started
// with a watchdog the descriptor of its beat area.
const BeatFDEnv = "HB_BEAT_FD"

// BeatSize is the size of a beat area. Its first 8 bytes are the beat
// counter; the rest is zero and reserved.
const BeatSize = 4096

var (
	beatWord atomic.Pointer[uint64]
	beatOnce sync.Once
	beatErr  error
)

// Beat tells hb that the service is making progress. It costs a load and a
// store of the beat counter: no system call, no fence, no lock prefix (a
// plain store is what a relaxed atomic store is on the machines hb runs on;
// the plugin only asks whether the counter changed, so a lost increment
// between threads is harmless). The first call maps the beat area named by
// HB_BEAT_FD (see BeatInit); without it Beat does nothing, so a service
// runs unchanged outside hb. Safe for concurrent use.
func Beat() {
	p := beatWord.Load()
	if p == nil {
		if BeatInit() != nil || beatWord.Load() == nil {
			return
		}
		p = beatWord.Load()
	}
	*p++
}

// BeatInit maps the beat area named by HB_BEAT_FD, once; Beat calls it
// itself, so calling it is optional: it moves the mmap out of the first
// beat and reports a descriptor that is not a beat area. It returns nil
// when the area is mapped or when HB_BEAT_FD is not set (no watchdog:
// Beats does nothing).
func BeatInit() error {
	beatOnce.Do(func() {
		v := os.Getenv(BeatFDEnv)
		if v == "" {
			return
		}
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 0 {
			beatErr = fmt.Errorf("shm: %s=%q is not a descriptor number", BeatFDEnv, v)
			return
		}
		b, err := unix.Mmap(fd, 0, BeatSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			beatErr = fmt.Errorf("shm: map the beat area (%s=%d): %w", BeatFDEnv, fd, err)
			return
		}
		beatWord.Store((*uint64)(unsafe.Pointer(&b[0])))
	})
	return beatErr
}

// Beating reports whether Beat reaches a beat area (the service was started
// with a watchdog).
func Beating() bool { return BeatInit() == nil && beatWord.Load() != nil }

// BeatArea is the plugin's side of one incarnation's beat area: a memfd of
// BeatSize bytes, sealed so that its size never changes (F_SEAL_SHRINK,
// F_SEAL_GROW, F_SEAL_SEAL: a service cannot truncate it under the plugin's
// mapping), mapped read-only here. The descriptor is handed to the service
// at spawn (it becomes the child's HB_BEAT_FD) and closed here after the
// spawn; the mapping stays until Close.
type BeatArea struct {
	fd  int
	mem []byte
}

// NewBeatArea creates a beat area named name (shown in /proc/PID/fd of the
// service as memfd:NAME). Its counter starts at 0.
func NewBeatArea(name string) (*BeatArea, error) {
	fd, err := unix.MemfdCreate("hb-beat:"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: beat area for %q: memfd_create: %w", name, err)
	}
	fail := func(what string, err error) (*BeatArea, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: beat area for %q: %s: %w", name, what, err)
	}
	if err := unix.Ftruncate(fd, BeatSize); err != nil {
		return fail("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail("seal", err)
	}
	mem, err := unix.Mmap(fd, 0, BeatSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	return &BeatArea{fd: fd, mem: mem}, nil
}

// FD is the memfd (close-on-exec), -1 after CloseFD.
func (a *BeatArea) FD() int { return a.fd }

// CloseFD closes the descriptor; the mapping stays.
func (a *BeatArea) CloseFD() {
	if a.fd >= 0 {
		unix.Close(a.fd)
		a.fd = -1
	}
}

// Count is the beat counter (an atomic load).
func (a *BeatArea) Count() uint64 {
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&a.mem[0])))
}

// Close closes the descriptor and unmaps the area.
func (a *BeatArea) Close() {
	a.CloseFD()
	if a.mem != nil {
		unix.Munmap(a.mem)
		a.mem = nil
	}
}
