package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options configure Create.
type Options struct {
	// Slots is the capacity of a new table (0: DefaultSlots; at most
	// MaxSlots). An adopted table keeps the capacity it was created with.
	Slots int
	// Dir is the directory holding the table (""/default: /dev/shm). Tests
	// point it at a temporary directory.
	Dir string

	hooks *hooks // test hook: fixed clocks and writer PID for golden files
}

// hooks replace the clocks and the writer PID (tests only).
type hooks struct {
	pid  uint32
	mono func() uint64 // CLOCK_MONOTONIC ns
	real func() uint64 // CLOCK_REALTIME ns

	noTmpfile bool // pretend the file system lacks O_TMPFILE
}

// Writer is the single writer of a table: the plugin. It holds an exclusive
// flock(2) on the table file for its whole life, so a second Writer on the
// same table fails with ErrBusy, and a Writer started after the previous one
// died adopts the table with its live slots.
//
// Writer methods are safe for concurrent use by the goroutines of the writer
// process. Updates of a slot's seqlock-protected fields are serialised by mu;
// ClearPID is a lock-free compare-and-swap so the exit fast path never waits.
// Close must not run concurrently with any other method.
//
// Methods taking a slot index panic if the index is out of range or (except
// Free and ClearPID) names a free slot: indexes come from Alloc, so that is a
// bug in the caller.
type Writer struct {
	*Table

	fd      int // the table file, open O_RDWR and flock'ed LOCK_EX; closed by Close
	adopted bool
	dev     uint64 // device and inode of the table file, for Unlink
	ino     uint64
	pid     uint32        // written to header writer_pid
	mono    func() uint64 // CLOCK_MONOTONIC ns (changed_ns, writer_beat_ns)
	real    func() uint64 // CLOCK_REALTIME ns (created_ns)
	noTmp   bool          // test hook: skip O_TMPFILE

	mu    sync.Mutex     // guards names, index and every seqlock-protected slot update
	names []string       // slot index -> service name, "" if free; guarded by mu
	index map[string]int // service name -> slot index; guarded by mu
}

// errExist reports that another process published the table first.
var errExist = errors.New("table appeared while creating it")

// maxCreateTries bounds the create/adopt race loop in Create.
const maxCreateTries = 8

// Create opens the table dir/name (dir defaults to /dev/shm) as its writer.
//
// If the file does not exist, a new table with opt.Slots slots is built in an
// unnamed file (mode 0644 regardless of umask: readable by all, writable by
// the owner only), locked, and then linked to its name, so a reader never sees
// a half-written header. If it exists, it is adopted: it must be a regular
// file (not a symlink: ErrSymlink, ErrNotRegular), owned by the effective user
// (ErrOwner), not writable by group or others (ErrMode), not locked by a live
// writer (ErrBusy), and carry a compatible ABI v1 header (ErrBadMagic,
// ErrVersion, ErrLayout). Adopting keeps every slot, its index, created_ns and
// the existing capacity (opt.Slots is ignored). Either way writer_pid becomes
// this process and writer_beat_ns is set.
func Create(name string, opt Options) (*Writer, error) {
	if err := ValidTableName(name); err != nil {
		return nil, err
	}
	dir := opt.Dir
	if dir == "" {
		dir = DefaultDir
	}
	path := filepath.Join(dir, name)
	slots := opt.Slots
	if slots == 0 {
		slots = DefaultSlots
	}
	if slots < 0 || slots > MaxSlots {
		return nil, fmt.Errorf("shm: create %s: %w: %d slots, want 1..%d", path, ErrLayout, slots, MaxSlots)
	}
	w := &Writer{fd: -1, pid: uint32(os.Getpid()), mono: MonotonicNs, real: realtimeNs}
	if h := opt.hooks; h != nil {
		w.pid, w.mono, w.real, w.noTmp = h.pid, h.mono, h.real, h.noTmpfile
	}
	for range maxCreateTries {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err == nil {
			if err := w.adopt(fd, path); err != nil {
				return nil, err
			}
			return w, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return nil, openError(path, err)
		}
		err = w.create(dir, path, slots)
		if err == nil {
			return w, nil
		}
		if !errors.Is(err, errExist) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("shm: create %s: the file kept appearing and vanishing (%d tries)", path, maxCreateTries)
}

// create builds a new table and publishes it at path. It returns errExist if
// path was created by someone else meanwhile.
func (w *Writer) create(dir, path string, slots int) (err error) {
	fd, tmp, err := openUnnamed(dir, w.noTmp)
	if err != nil {
		return fmt.Errorf("shm: create %s: %w", path, err)
	}
	var mem []byte
	defer func() {
		if tmp != "" {
			unix.Unlink(tmp)
		}
		if err != nil {
			if mem != nil {
				unix.Munmap(mem)
			}
			unix.Close(fd)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("shm: create %s: fstat: %w", path, err)
	}
	if err := unix.Fchmod(fd, 0o644); err != nil {
		return fmt.Errorf("shm: create %s: fchmod: %w", path, err)
	}
	size := HeaderSize + slots*SlotSize
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fmt.Errorf("shm: create %s: ftruncate %d: %w", path, size, err)
	}
	mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		mem = nil
		return fmt.Errorf("shm: create %s: mmap %d bytes: %w", path, size, err)
	}
	t := &Table{mem: mem, base: unsafe.Pointer(&mem[0]), n: slots, path: path}
	copy(mem[hdrMagic:hdrMagic+8], Magic[:])
	atomic.StoreUint32(t.u32(hdrVersion), Version)
	atomic.StoreUint32(t.u32(hdrHeaderSize), HeaderSize)
	atomic.StoreUint32(t.u32(hdrSlotSize), SlotSize)
	atomic.StoreUint32(t.u32(hdrSlotCount), uint32(slots))
	atomic.StoreUint32(t.u32(hdrWriterPID), w.pid)
	atomic.StoreUint64(t.u64(hdrCreatedNs), w.real())
	atomic.StoreUint64(t.u64(hdrBeatNs), w.mono())
	// Lock before publishing so that no other writer can adopt it first.
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("shm: create %s: flock: %w", path, err)
	}
	if err := publish(fd, tmp, path); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errExist
		}
		return fmt.Errorf("shm: create %s: link: %w", path, err)
	}
	w.Table, w.fd, w.dev, w.ino = t, fd, uint64(st.Dev), uint64(st.Ino)
	w.names = make([]string, slots)
	w.index = make(map[string]int)
	return nil
}

// openUnnamed opens a new, empty, unnamed file in dir (O_TMPFILE). Where the
// file system lacks O_TMPFILE it falls back to a uniquely named file, whose
// name it returns so that the caller can remove it after publishing.
func openUnnamed(dir string, noTmpfile bool) (fd int, tmp string, err error) {
	if !noTmpfile {
		fd, err = unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return fd, "", nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
			return -1, "", fmt.Errorf("open O_TMPFILE in %s: %w", dir, err)
		}
	}
	for range 16 {
		tmp = filepath.Join(dir, ".hb-new."+strconv.Itoa(os.Getpid())+"."+strconv.FormatUint(rand.Uint64(), 36))
		fd, err = unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if !errors.Is(err, unix.EEXIST) {
			break
		}
	}
	if err != nil {
		return -1, "", fmt.Errorf("create %s: %w", tmp, err)
	}
	return fd, tmp, nil
}

// publish gives the file open as fd the name path; it fails with EEXIST if
// path exists. tmp is the file's temporary name, "" for an O_TMPFILE file.
func publish(fd int, tmp, path string) error {
	if tmp != "" {
		return unix.Link(tmp, path)
	}
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.ENOENT) { // no /proc: this form needs CAP_DAC_READ_SEARCH
		err = unix.Linkat(fd, "", unix.AT_FDCWD, path, unix.AT_EMPTY_PATH)
	}
	return err
}

// adopt takes over the existing table open as fd; it closes fd on failure.
func (w *Writer) adopt(fd int, path string) (err error) {
	defer func() {
		if err != nil {
			if w.Table != nil {
				w.Table.Close()
				w.Table = nil
			}
			unix.Close(fd)
			err = fmt.Errorf("shm: adopt %s: %w", path, err)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if err := checkFile(&st, true); err != nil {
		return err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			var b [4]byte
			if n, _ := unix.Pread(fd, b[:], hdrWriterPID); n == 4 {
				return fmt.Errorf("%w (writer_pid %d)", ErrBusy, binary.NativeEndian.Uint32(b[:]))
			}
			return ErrBusy
		}
		return fmt.Errorf("flock: %w", err)
	}
	t, err := mapTable(fd, path, st.Size, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return err
	}
	w.Table = t
	w.names = make([]string, t.n)
	w.index = make(map[string]int)
	for i := range t.n {
		if err := w.adoptSlot(i); err != nil {
			return err
		}
	}
	atomic.StoreUint32(t.u32(hdrWriterPID), w.pid)
	atomic.StoreUint64(t.u64(hdrBeatNs), w.mono())
	w.fd, w.adopted, w.dev, w.ino = fd, true, uint64(st.Dev), uint64(st.Ino)
	return nil
}

// adoptSlot repairs what a writer that died inside an update left behind in
// slot i (an odd seq, a half-freed slot) and records the slot's name.
func (w *Writer) adoptSlot(i int) error {
	off := slotOff(i)
	seq := w.u32(off + slSeq)
	if s := atomic.LoadUint32(seq); s&1 != 0 {
		atomic.StoreUint32(seq, s+1)
	}
	if atomic.LoadUint32(w.u32(off+slState)) == uint32(StateFree) {
		for k := slPID; k < SlotSize; k += 4 {
			if k != slSeq && atomic.LoadUint32(w.u32(off+k)) != 0 {
				w.begin(off)
				w.zeroSlot(off)
				w.end(off)
				break
			}
		}
		return nil
	}
	b := w.loadName(off)
	name := nameString(&b)
	if err := ValidName(name); err != nil {
		return fmt.Errorf("%w: slot %d: %w", ErrLayout, i, err)
	}
	if j, dup := w.index[name]; dup {
		return fmt.Errorf("%w: slots %d and %d both hold service %q", ErrLayout, j, i, name)
	}
	w.names[i], w.index[name] = name, i
	return nil
}

// Adopted reports whether Create adopted an existing table rather than
// creating a new one.
func (w *Writer) Adopted() bool { return w.adopted }

// begin and end bracket an update of the seqlock-protected bytes 4–127 of the
// slot at off: seq is odd in between. The caller holds mu.
func (w *Writer) begin(off int) {
	seq := w.u32(off + slSeq)
	atomic.StoreUint32(seq, atomic.LoadUint32(seq)+1)
}

func (w *Writer) end(off int) { w.begin(off) }

// zeroSlot zeroes every word of the slot at off but seq, state first. The
// caller holds mu and has called begin.
func (w *Writer) zeroSlot(off int) {
	atomic.StoreUint32(w.u32(off+slState), 0)
	for k := slFlags; k < SlotSize; k += 4 {
		atomic.StoreUint32(w.u32(off+k), 0)
	}
	atomic.StoreUint32(w.u32(off+slPID), 0)
}

// storeName writes name NUL-padded into the slot at off with atomic 4-byte
// stores. The caller holds mu and has called begin.
func (w *Writer) storeName(off int, name string) {
	var b [slNameLen]byte
	copy(b[:NameMax], name)
	words := (*[nameWords]uint32)(unsafe.Pointer(&b))
	for k, v := range words {
		atomic.StoreUint32(w.u32(off+slName+4*k), v)
	}
}

// mustSlot returns the offset of slot i, panicking if i is out of range or,
// with used, if the slot is free. The caller holds mu.
func (w *Writer) mustSlot(i int, used bool) int {
	if uint(i) >= uint(w.n) {
		panic(fmt.Sprintf("shm: slot index %d out of range [0,%d)", i, w.n))
	}
	if used && w.names[i] == "" {
		panic(fmt.Sprintf("shm: slot %d is not allocated", i))
	}
	return slotOff(i)
}

// Alloc returns the slot of service, allocating the lowest free slot if the
// service has none: state StateStopped, last_status -1, everything else 0.
// A service keeps its index until Free. Errors wrap ErrBadName, ErrFull or
// ErrClosed.
func (w *Writer) Alloc(service string) (int, error) {
	if err := ValidName(service); err != nil {
		return -1, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return -1, fmt.Errorf("shm: alloc %q: %w", service, ErrClosed)
	}
	if i, ok := w.index[service]; ok {
		return i, nil
	}
	for i, n := range w.names {
		if n != "" {
			continue
		}
		off := slotOff(i)
		atomic.StoreUint32(w.u32(off+slPID), 0)
		w.begin(off)
		w.zeroSlot(off)
		w.storeName(off, service)
		atomic.StoreUint32(w.u32(off+slLastStatus), ^uint32(0)) // -1: no exit yet
		atomic.StoreUint64(w.u64(off+slChangedNs), w.mono())
		atomic.StoreUint32(w.u32(off+slState), uint32(StateStopped)) // last: marks the slot used
		w.end(off)
		w.names[i], w.index[service] = service, i
		return i, nil
	}
	return -1, fmt.Errorf("shm: %s: alloc %q: %w (%d slots)", w.path, service, ErrFull, w.n)
}

// Lookup returns the slot of service from the writer's own index (no scan).
// The error wraps ErrNotFound.
func (w *Writer) Lookup(service string) (int, error) {
	w.mu.Lock()
	i, ok := w.index[service]
	w.mu.Unlock()
	if !ok {
		return -1, fmt.Errorf("shm: %s: service %q: %w", w.path, service, ErrNotFound)
	}
	return i, nil
}

// Free releases slot i: state StateFree and every field zeroed (seq keeps
// counting). The index may then be reused by Alloc. Freeing a free slot does
// nothing. It refuses a slot whose PID is not 0 (ErrRunning): clear the PID
// when the process exits, then free it. Errors wrap ErrIndex, ErrRunning or
// ErrClosed.
func (w *Writer) Free(i int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return fmt.Errorf("shm: free slot %d: %w", i, ErrClosed)
	}
	if uint(i) >= uint(w.n) {
		return fmt.Errorf("shm: free slot %d: %w [0,%d)", i, ErrIndex, w.n)
	}
	name := w.names[i]
	if name == "" {
		return nil
	}
	off := slotOff(i)
	if pid := atomic.LoadUint32(w.u32(off + slPID)); pid != 0 {
		return fmt.Errorf("shm: free slot %d (%q): %w (pid %d)", i, name, ErrRunning, pid)
	}
	w.begin(off)
	w.zeroSlot(off)
	w.end(off)
	w.names[i] = ""
	delete(w.index, name)
	return nil
}

// Spawned records a new incarnation in slot i: seq odd; generation,
// start_time, state, changed_ns (now), flags; seq even; and only then the PID
// (atomic store), so a reader that sees the PID sees the incarnation's fields.
func (w *Writer) Spawned(i int, pid uint32, gen, startTime uint64, state State, flags uint32) {
	mustState(state)
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	w.begin(off)
	atomic.StoreUint64(w.u64(off+slGeneration), gen)
	atomic.StoreUint64(w.u64(off+slStartTime), startTime)
	atomic.StoreUint32(w.u32(off+slState), uint32(state))
	atomic.StoreUint64(w.u64(off+slChangedNs), w.mono())
	atomic.StoreUint32(w.u32(off+slFlags), flags)
	w.end(off)
	atomic.StoreUint32(w.u32(off+slPID), pid)
}

// ClearPID sets slot i's PID to 0 if it is pid (compare-and-swap), so the
// exit of an old incarnation can never clear a newer one. It is the exit fast
// path: no lock, no system call, safe to call from any goroutine at any time
// before Close. It returns false if the slot did not hold pid (or i is out of
// range, or pid is 0).
func (w *Writer) ClearPID(i int, pid uint32) bool {
	if pid == 0 || uint(i) >= uint(w.n) {
		return false
	}
	return atomic.CompareAndSwapUint32(w.u32(slotOff(i)+slPID), pid, 0)
}

// RecordExit records the exit of pid from slot i. It first clears the PID
// (ClearPID: the PID is 0 before anything about the exit is visible); then,
// under the seqlock, it sets state and changed_ns (now), last_status,
// last_pid, last_exit_ns (exitNs, CLOCK_MONOTONIC when detected) and
// increments exits. If the slot already holds a newer incarnation (a
// non-zero PID other than pid), state and changed_ns are left alone.
func (w *Writer) RecordExit(i int, pid uint32, status int32, exitNs uint64, state State) {
	mustState(state)
	w.ClearPID(i, pid)
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	newer := atomic.LoadUint32(w.u32(off+slPID)) != 0
	w.begin(off)
	if !newer {
		atomic.StoreUint32(w.u32(off+slState), uint32(state))
		atomic.StoreUint64(w.u64(off+slChangedNs), w.mono())
	}
	atomic.StoreUint32(w.u32(off+slLastStatus), uint32(status))
	atomic.StoreUint32(w.u32(off+slLastPID), pid)
	atomic.StoreUint64(w.u64(off+slLastExitNs), exitNs)
	exits := w.u64(off + slExits)
	atomic.StoreUint64(exits, atomic.LoadUint64(exits)+1)
	w.end(off)
}

// SetState sets slot i's state and changed_ns (now) under the seqlock. s
// must be a valid state other than StateFree (use Free).
func (w *Writer) SetState(i int, s State) {
	mustState(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	w.begin(off)
	atomic.StoreUint32(w.u32(off+slState), uint32(s))
	atomic.StoreUint64(w.u64(off+slChangedNs), w.mono())
	w.end(off)
}

// SetFlags sets slot i's flags (SlotAdopted) under the seqlock.
func (w *Writer) SetFlags(i int, flags uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	w.begin(off)
	atomic.StoreUint32(w.u32(off+slFlags), flags)
	w.end(off)
}

func mustState(s State) {
	if s == StateFree || !s.Valid() {
		panic(fmt.Sprintf("shm: state %v cannot be set on an allocated slot", s))
	}
}

// SetHeaderFlags stores the header flags (FlagConnector, FlagPidfd,
// FlagTracepoint).
func (w *Writer) SetHeaderFlags(f uint32) {
	if w.base == nil {
		return
	}
	atomic.StoreUint32(w.u32(hdrFlags), f)
}

// Beat stores CLOCK_MONOTONIC in writer_beat_ns. The writer calls it at least
// once a second so readers can tell that the watcher itself is alive.
func (w *Writer) Beat() {
	if w.base == nil {
		return
	}
	atomic.StoreUint64(w.u64(hdrBeatNs), w.mono())
}

// Unlink removes the table's name if it still names this table (it may be
// called before or after Close). The mapping
// stays valid for every process that has it until each unmaps it; a later
// Create makes a new table.
func (w *Writer) Unlink() error {
	var there unix.Stat_t
	if err := unix.Lstat(w.path, &there); err != nil {
		return fmt.Errorf("shm: unlink %s: %w", w.path, err)
	}
	if uint64(there.Dev) != w.dev || uint64(there.Ino) != w.ino {
		return fmt.Errorf("shm: unlink %s: names another file now", w.path)
	}
	if err := unix.Unlink(w.path); err != nil {
		return fmt.Errorf("shm: unlink %s: %w", w.path, err)
	}
	return nil
}

// Close unmaps the table and releases the writer lock. With clean set it
// first stores writer_pid 0, telling readers the writer stopped on purpose;
// without it the header still names this process (a plugin that exits for a
// restart leaves it so). The file is kept: its slots survive for the next
// writer (see Unlink). Close is idempotent; no other method may be called
// concurrently with or after it.
func (w *Writer) Close(clean bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return nil
	}
	if clean {
		atomic.StoreUint32(w.u32(hdrWriterPID), 0)
	}
	err := w.Table.Close()
	if cerr := unix.Close(w.fd); cerr != nil && err == nil {
		err = fmt.Errorf("shm: close %s: %w", w.path, cerr)
	}
	w.fd = -1
	return err
}
