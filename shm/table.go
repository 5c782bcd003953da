package shm

import (
	"errors"
	"fmt"
	"iter"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultDir is where tables live: the POSIX shared-memory file system.
const DefaultDir = "/dev/shm"

// spinTries is how many times a seqlock reader retries before it starts
// yielding the processor between attempts.
const spinTries = 64

// Table is a view of a mapped table. A Table returned by Open is read-only
// (PROT_READ); the Writer embeds a writable one. All methods of a Table are
// safe for concurrent use; Close must not run concurrently with the others.
type Table struct {
	mem  []byte         // the whole mapping; nil after Close
	base unsafe.Pointer // &mem[0]; nil after Close
	n    int            // slot count; 0 after Close so PID(i) returns 0
	path string
}

// Open maps the table /dev/shm/name read-only, or the table at name when it
// is an absolute path (as services get it in $HB_SHM). See OpenPath.
func Open(name string) (*Table, error) {
	return OpenOwned(name, uint32(unix.Geteuid()))
}

// OpenOwned is Open for a table written by hb running as owner: it accepts a
// table file owned by root or by owner (see OpenPathOwned).
func OpenOwned(name string, owner uint32) (*Table, error) {
	if strings.HasPrefix(name, "/") {
		return OpenPathOwned(name, owner) // $HB_SHM as given to services: the table's full path
	}
	if err := ValidTableName(name); err != nil {
		return nil, err
	}
	return OpenPathOwned(filepath.Join(DefaultDir, name), owner)
}

// OpenPath maps the table at path read-only if it is owned by root or by the
// caller's effective user; see OpenPathOwned.
func OpenPath(path string) (*Table, error) {
	return OpenPathOwned(path, uint32(unix.Geteuid()))
}

// OpenPathOwned maps the table at path read-only (PROT_READ, MAP_SHARED). It
// refuses a symlink (ErrSymlink), anything but a regular file
// (ErrNotRegular), a file owned by anyone but root or owner (ErrOwner: any
// local user may create a file in /dev/shm before hb does and forge the
// slots), a file writable by group or others (ErrMode, since anyone could
// then forge liveness) and a bad header (ErrBadMagic, ErrVersion,
// ErrLayout). An ErrOwner error names the file's owner and what to do. The
// file descriptor is closed before OpenPathOwned returns; the mapping stays
// valid until Close, even if the writer exits or the file is removed.
func OpenPathOwned(path string, owner uint32) (*Table, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, openError(path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: open %s: fstat: %w", path, err)
	}
	if err := checkFile(&st, owner, false); err != nil {
		if errors.Is(err, ErrOwner) {
			return nil, fmt.Errorf("shm: open %s: %w: not a table hb made; if no hb runs, remove it (rm %s); "+
				"if hb runs as that user, name it as the table's owner (OpenOwned, hbpeek -u)", path, err, path)
		}
		return nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	t, err := mapTable(fd, path, st.Size, unix.PROT_READ)
	if err != nil {
		return nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	return t, nil
}

// openError wraps the error of open(2) on path; ELOOP from O_NOFOLLOW becomes ErrSymlink.
func openError(path string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("shm: open %s: %w", path, ErrSymlink)
	}
	return fmt.Errorf("shm: open %s: %w", path, err)
}

// checkFile vets an open table file: regular, not writable by group or
// others and owned by owner or, for a reader, by root.
func checkFile(st *unix.Stat_t, owner uint32, writer bool) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w (mode %#o)", ErrNotRegular, st.Mode&unix.S_IFMT)
	}
	if writer && st.Uid != owner {
		return fmt.Errorf("%w (uid %d, we are %d)", ErrOwner, st.Uid, owner)
	}
	if !writer && st.Uid != 0 && st.Uid != owner {
		return fmt.Errorf("%w (uid %d, mode %04o; accepted: root and uid %d)", ErrOwner, st.Uid, st.Mode&0o7777, owner)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%w (mode %04o)", ErrMode, st.Mode&0o7777)
	}
	return nil
}

// mapTable maps size bytes of fd with prot and validates the header.
func mapTable(fd int, path string, size int64, prot int) (*Table, error) {
	if size < HeaderSize {
		return nil, fmt.Errorf("%w: file size %d is smaller than the %d-byte header", ErrLayout, size, HeaderSize)
	}
	if int64(int(size)) != size {
		return nil, fmt.Errorf("%w: file size %d does not fit in memory", ErrLayout, size)
	}
	mem, err := unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	n, err := checkHeader(mem)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return &Table{mem: mem, base: unsafe.Pointer(&mem[0]), n: n, path: path}, nil
}

// checkHeader validates an ABI v1 header against the size of the mapping and
// returns the slot count.
func checkHeader(mem []byte) (int, error) {
	if [8]byte(mem[hdrMagic:hdrMagic+8]) != Magic {
		return 0, fmt.Errorf("%w (% x)", ErrBadMagic, mem[hdrMagic:hdrMagic+8])
	}
	base := unsafe.Pointer(&mem[0])
	load := func(off int) uint32 { return atomic.LoadUint32((*uint32)(unsafe.Add(base, off))) }
	if v := load(hdrVersion); v != Version {
		return 0, fmt.Errorf("%w %d (this reader speaks %d)", ErrVersion, v, Version)
	}
	if v := load(hdrHeaderSize); v != HeaderSize {
		return 0, fmt.Errorf("%w: header_size %d, want %d", ErrLayout, v, HeaderSize)
	}
	if v := load(hdrSlotSize); v != SlotSize {
		return 0, fmt.Errorf("%w: slot_size %d, want %d", ErrLayout, v, SlotSize)
	}
	n := load(hdrSlotCount)
	if n == 0 {
		return 0, fmt.Errorf("%w: slot_count 0", ErrLayout)
	}
	if want := int64(HeaderSize) + int64(n)*SlotSize; int64(len(mem)) != want {
		return 0, fmt.Errorf("%w: file size %d, want %d for %d slots", ErrLayout, len(mem), want, n)
	}
	return int(n), nil
}

func (t *Table) u32(off int) *uint32 { return (*uint32)(unsafe.Add(t.base, off)) }
func (t *Table) u64(off int) *uint64 { return (*uint64)(unsafe.Add(t.base, off)) }

// slot returns the byte offset of slot i.
func slotOff(i int) int { return HeaderSize + i*SlotSize }

// Path is the file the table was opened from.
func (t *Table) Path() string { return t.path }

// Len is the table's capacity in slots (header slot_count).
func (t *Table) Len() int { return t.n }

// Close unmaps the table. Afterwards PID returns 0 and Len 0; other methods
// must not be called. Close is idempotent.
func (t *Table) Close() error {
	if t.mem == nil {
		return nil
	}
	mem := t.mem
	t.n, t.base, t.mem = 0, nil, nil
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("shm: munmap %s: %w", t.path, err)
	}
	return nil
}

// Header returns a copy of the header. Each field is read atomically; the
// copy as a whole is not a snapshot (WriterPID, Flags and WriterBeatNs
// change independently).
func (t *Table) Header() Header {
	if t.base == nil {
		return Header{}
	}
	return Header{
		Version:      atomic.LoadUint32(t.u32(hdrVersion)),
		HeaderSize:   atomic.LoadUint32(t.u32(hdrHeaderSize)),
		SlotSize:     atomic.LoadUint32(t.u32(hdrSlotSize)),
		SlotCount:    atomic.LoadUint32(t.u32(hdrSlotCount)),
		WriterPID:    atomic.LoadUint32(t.u32(hdrWriterPID)),
		Flags:        atomic.LoadUint32(t.u32(hdrFlags)),
		CreatedNs:    atomic.LoadUint64(t.u64(hdrCreatedNs)),
		WriterBeatNs: atomic.LoadUint64(t.u64(hdrBeatNs)),
		LayoutSeq:    atomic.LoadUint64(t.u64(hdrLayoutSeq)),
		WriterAlive:  atomic.LoadUint32(t.u32(hdrWriterAlive)),
		Changes:      atomic.LoadUint32(t.u32(hdrChanges)),
	}
}

// PID returns the PID in slot i: non-zero while the service's process is
// alive, 0 when it is not running (or i is out of range, or the table is
// closed). It is one atomic load: no allocation, no system call, no lock.
func (t *Table) PID(i int) uint32 {
	if uint(i) >= uint(t.n) {
		return 0
	}
	return atomic.LoadUint32((*uint32)(unsafe.Add(t.base, HeaderSize+i*SlotSize)))
}

// Snapshot returns a consistent copy of slot i, never a torn one: the fields
// under the seqlock are copied until the sequence number is even and
// unchanged, and PID is accepted only if it did not change during the copy.
// It spins while the writer is inside an update (yielding the processor after
// a few tries); a writer that died inside an update leaves the slot busy
// until the next writer adopts the table, so use TrySnapshot where a bounded
// wait matters. For i out of range it returns Slot{Index: i} (state free).
func (t *Table) Snapshot(i int) Slot {
	s, _ := t.snapshot(i, -1)
	return s
}

// TrySnapshot is Snapshot with at most tries attempts; ok is false (and the
// Slot zero but for Index) if no consistent copy was obtained.
func (t *Table) TrySnapshot(i int, tries int) (s Slot, ok bool) {
	return t.snapshot(i, tries)
}

func (t *Table) snapshot(i int, tries int) (Slot, bool) {
	if uint(i) >= uint(t.n) {
		return Slot{Index: i}, true
	}
	off := slotOff(i)
	seq := t.u32(off + slSeq)
	pid := t.u32(off + slPID)
	for try := 0; tries < 0 || try < tries; try++ {
		if try >= spinTries {
			runtime.Gosched()
		}
		s1 := atomic.LoadUint32(seq)
		if s1&1 != 0 {
			continue
		}
		p1 := atomic.LoadUint32(pid)
		s := Slot{
			Index:      i,
			State:      State(atomic.LoadUint32(t.u32(off + slState))),
			Flags:      atomic.LoadUint32(t.u32(off + slFlags)),
			Generation: atomic.LoadUint64(t.u64(off + slGeneration)),
			StartTime:  atomic.LoadUint64(t.u64(off + slStartTime)),
			ChangedNs:  atomic.LoadUint64(t.u64(off + slChangedNs)),
			Exits:      atomic.LoadUint64(t.u64(off + slExits)),
			LastStatus: int32(atomic.LoadUint32(t.u32(off + slLastStatus))),
			LastPID:    atomic.LoadUint32(t.u32(off + slLastPID)),
			LastExitNs: atomic.LoadUint64(t.u64(off + slLastExitNs)),
		}
		name := t.loadName(off)
		if atomic.LoadUint32(seq) != s1 || atomic.LoadUint32(pid) != p1 {
			continue
		}
		s.PID = p1
		s.Name = nameString(&name)
		return s, true
	}
	return Slot{Index: i}, false
}

// loadName copies the name field of the slot at off with atomic 4-byte loads;
// the caller validates the copy with the seqlock.
func (t *Table) loadName(off int) (b [slNameLen]byte) {
	w := (*[nameWords]uint32)(unsafe.Pointer(&b))
	for k := range w {
		w[k] = atomic.LoadUint32(t.u32(off + slName + 4*k))
	}
	return b
}

// nameString returns the NUL-terminated name in b.
func nameString(b *[slNameLen]byte) string {
	for k, c := range b {
		if c == 0 {
			return string(b[:k])
		}
	}
	return string(b[:])
}

// readName returns a consistent copy of slot i's name and whether the slot
// was in use, with the seqlock; it spins like Snapshot.
func (t *Table) readName(i int) (name [slNameLen]byte, used bool) {
	off := slotOff(i)
	seq := t.u32(off + slSeq)
	for try := 0; ; try++ {
		if try >= spinTries {
			runtime.Gosched()
		}
		s1 := atomic.LoadUint32(seq)
		if s1&1 != 0 {
			continue
		}
		used = atomic.LoadUint32(t.u32(off+slState)) != uint32(StateFree)
		name = t.loadName(off)
		if atomic.LoadUint32(seq) == s1 {
			return name, used
		}
	}
}

// Lookup returns the index of service's slot by a linear scan of the used
// slots. A slot keeps its index while its service exists, so look a name up
// once and then use PID(i). The error wraps ErrNotFound.
func (t *Table) Lookup(service string) (int, error) {
	if n := len(service); n > 0 && n <= NameMax {
		var want [slNameLen]byte
		copy(want[:], service)
		ww := (*[nameWords]uint32)(unsafe.Pointer(&want))
	slots:
		for i := 0; i < t.n; i++ {
			off := slotOff(i)
			if atomic.LoadUint32(t.u32(off+slState)) == uint32(StateFree) {
				continue
			}
			// Cheap filter without the seqlock: skip at the first differing
			// word. A candidate is then confirmed with a consistent copy.
			for k, v := range ww {
				if atomic.LoadUint32(t.u32(off+slName+4*k)) != v {
					continue slots
				}
			}
			if name, used := t.readName(i); used && name == want {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("shm: %s: service %q: %w", t.path, service, ErrNotFound)
}

// Used iterates over Snapshots of the slots whose state is not StateFree, in
// index order.
func (t *Table) Used() iter.Seq[Slot] {
	return func(yield func(Slot) bool) {
		for i := 0; i < t.n; i++ {
			if atomic.LoadUint32(t.u32(slotOff(i)+slState)) == uint32(StateFree) {
				continue
			}
			s := t.Snapshot(i)
			if s.State == StateFree {
				continue
			}
			if !yield(s) {
				return
			}
		}
	}
}
