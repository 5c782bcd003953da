package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
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

	noTmpfile bool   // pretend the file system lacks O_TMPFILE
	alive     uint32 // MarkAlive stores this instead of a real TID (no robust list)
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
	// Table is the shadow: the writer's own copy of the table in private
	// memory. Every update is stored there first and then in each mapped
	// file, and every read of the writer (Used, Snapshot, PID...) is served
	// from it, so a table file truncated under the writer never faults a read
	// and can be restored from it.
	*Table

	// files are the mapped table files, oldest first; the last is the one
	// the table's name should point to. Readers that mapped an older file
	// (before its name was removed and Check made a new one) keep getting
	// every update. Replaced (copy on write) with mu held; loaded lock-free
	// by ClearPID.
	files   atomic.Pointer[[]*tableFile]
	dir     string
	size    int
	adopted bool
	pid     uint32        // written to header writer_pid
	mono    func() uint64 // CLOCK_MONOTONIC ns (changed_ns, writer_beat_ns)
	real    func() uint64 // CLOCK_REALTIME ns (created_ns)
	noTmp   bool          // test hook: skip O_TMPFILE
	alive   uint32        // test hook: MarkAlive's value instead of a TID
	robust  *robust       // the robust list that marks writer_alive when the writer dies

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
// the owner only), its pages allocated (fallocate: a full file system fails
// here, with ErrNoSpace, not later with SIGBUS), locked, and then linked to
// its name, so a reader never sees a half-written header. If it exists, it is
// adopted: it must be a regular file (not a symlink: ErrSymlink,
// ErrNotRegular), owned by the effective user (ErrOwner), not writable by
// group or others (ErrMode), not locked by a live writer (ErrBusy), and carry
// a compatible ABI v1 header (ErrBadMagic, ErrVersion, ErrLayout); a file
// refused for its owner, mode or header is named in the error with its owner
// and mode and how to remove it. Adopting keeps every slot, its index,
// created_ns and the existing capacity (opt.Slots is ignored). Either way
// writer_pid becomes this process and writer_beat_ns is set.
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
	w := &Writer{dir: dir, pid: uint32(os.Getpid()), mono: MonotonicNs, real: realtimeNs}
	if h := opt.hooks; h != nil {
		w.pid, w.mono, w.real, w.noTmp, w.alive = h.pid, h.mono, h.real, h.noTmpfile, h.alive
	}
	w.files.Store(&[]*tableFile{})
	r, err := newRobust()
	if err != nil {
		return nil, fmt.Errorf("shm: create %s: %w", path, err)
	}
	w.robust = r
	w, err = w.createOrAdopt(path, slots)
	if err != nil {
		r.end()
		return nil, err
	}
	return w, nil
}

// createOrAdopt is Create's loop: adopt the file at path, or create it.
func (w *Writer) createOrAdopt(path string, slots int) (*Writer, error) {
	for range maxCreateTries {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err == nil {
			if err := w.adopt(fd, path); err != nil {
				return nil, err
			}
			return w, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return nil, squatError(path, openError(path, err))
		}
		err = w.create(path, slots)
		if err == nil {
			return w, nil
		}
		if !errors.Is(err, errExist) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("shm: create %s: the file kept appearing and vanishing (%d tries)", path, maxCreateTries)
}

// squatError adds to err, an error about the file at path that the writer
// refuses, the file's owner and mode and how to get it out of the way.
func squatError(path string, err error) error {
	if !errors.Is(err, ErrOwner) && !errors.Is(err, ErrMode) && !errors.Is(err, ErrSymlink) &&
		!errors.Is(err, ErrNotRegular) && !errors.Is(err, ErrBadMagic) {
		return err
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return err
	}
	return fmt.Errorf("%w; %s is owned by uid %d, mode %04o (type %#o), and was not made by hb running as uid %d: "+
		"if no hb runs, remove it (rm %s) and start hbd again",
		err, path, st.Uid, st.Mode&0o7777, st.Mode&unix.S_IFMT, unix.Geteuid(), path)
}

// tableFile is one mapped table file of a Writer.
type tableFile struct {
	fd     int    // open O_RDWR and flock'ed LOCK_EX; closed by Close
	region []byte // the private page before the file and the file (mapWriterFile)
	mem    []byte
	base   unsafe.Pointer
	dev    uint64
	ino    uint64
	// bad is set when a store faulted (the file was truncated); stores
	// skip the file until Check has restored it.
	bad atomic.Bool
}

// faulted recovers the panic of a memory fault (debug.SetPanicOnFault) and
// marks f bad; any other panic goes on.
func (f *tableFile) faulted() {
	if r := recover(); r != nil {
		if _, ok := r.(interface{ Addr() uintptr }); ok {
			f.bad.Store(true)
			return
		}
		panic(r)
	}
}

// st32 and st64 store v at byte off of the file. A fault (the file was
// truncated under the mapping) marks the file bad instead of killing the
// process with SIGBUS.
func (f *tableFile) st32(off int, v uint32) {
	if f.bad.Load() {
		return
	}
	defer f.faulted()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	atomic.StoreUint32((*uint32)(unsafe.Add(f.base, off)), v)
}

func (f *tableFile) st64(off int, v uint64) {
	if f.bad.Load() {
		return
	}
	defer f.faulted()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	atomic.StoreUint64((*uint64)(unsafe.Add(f.base, off)), v)
}

// add32 adds 1 to the word at byte off of the file and returns the new
// value, with st32's fault handling.
func (f *tableFile) add32(off int) (v uint32) {
	if f.bad.Load() {
		return 0
	}
	defer f.faulted()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return atomic.AddUint32((*uint32)(unsafe.Add(f.base, off)), 1)
}

// entry is the file's robust-list entry: the last bytes of the private page
// mapped before it.
func (f *tableFile) entry() unsafe.Pointer { return unsafe.Add(f.base, -robustEntryBack) }

// cas32 is CompareAndSwapUint32 at byte off of the file, with st32's fault handling.
func (f *tableFile) cas32(off int, old, v uint32) {
	if f.bad.Load() {
		return
	}
	defer f.faulted()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	atomic.CompareAndSwapUint32((*uint32)(unsafe.Add(f.base, off)), old, v)
}

// close unmaps and closes f; dev and ino stay (Unlink). Stores skip it.
func (f *tableFile) close() error {
	f.bad.Store(true)
	err := unix.Munmap(f.region)
	if cerr := unix.Close(f.fd); err == nil {
		err = cerr
	}
	return err
}

// st32 and st64 store v at byte off of the shadow and then of every file.
func (w *Writer) st32(off int, v uint32) {
	atomic.StoreUint32(w.u32(off), v)
	for _, f := range *w.files.Load() {
		f.st32(off, v)
	}
}

func (w *Writer) st64(off int, v uint64) {
	atomic.StoreUint64(w.u64(off), v)
	for _, f := range *w.files.Load() {
		f.st64(off, v)
	}
}

// newShadow allocates the private copy of a table of size bytes.
func newShadow(path string, size int) (*Table, error) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of private memory: %w", size, err)
	}
	return &Table{mem: mem, base: unsafe.Pointer(&mem[0]), path: path}, nil
}

// allocate gives the first size bytes of fd their pages (fallocate), so that
// a store into the mapping never meets a full file system. A file system
// without fallocate is left as it is.
func allocate(fd int, path string, size int) error {
	err := unix.Fallocate(fd, 0, 0, int64(size))
	switch {
	case err == nil, errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		return nil
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("%w: cannot allocate the %d bytes of %s in %s (fallocate: %v): free space there, "+
			"or lower the table's slots", ErrNoSpace, size, filepath.Base(path), filepath.Dir(path), err)
	default:
		return fmt.Errorf("fallocate %d bytes: %w", size, err)
	}
}

// newFile builds an unnamed, allocated, locked and mapped file of w.size
// bytes in w.dir. tmp is its temporary name ("" for O_TMPFILE), which the
// caller removes after publishing.
func (w *Writer) newFile(path string) (f *tableFile, tmp string, err error) {
	fd, tmp, err := openUnnamed(w.dir, w.noTmp)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			if tmp != "" {
				unix.Unlink(tmp)
			}
			unix.Close(fd)
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, "", fmt.Errorf("fstat: %w", err)
	}
	if err := unix.Fchmod(fd, 0o644); err != nil {
		return nil, "", fmt.Errorf("fchmod: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(w.size)); err != nil {
		return nil, "", fmt.Errorf("ftruncate %d: %w", w.size, err)
	}
	if err := allocate(fd, path, w.size); err != nil {
		return nil, "", err
	}
	// Locked before it has a name, so that no other writer can adopt it first.
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, "", fmt.Errorf("flock: %w", err)
	}
	region, mem, err := mapWriterFile(fd, w.size)
	if err != nil {
		return nil, "", err
	}
	return &tableFile{fd: fd, region: region, mem: mem, base: unsafe.Pointer(&mem[0]), dev: uint64(st.Dev), ino: uint64(st.Ino)}, tmp, nil
}

// addFile appends f to w.files and links its robust-list entry. The caller
// holds mu (or owns w alone).
func (w *Writer) addFile(f *tableFile) {
	w.robust.link(f.entry())
	old := *w.files.Load()
	files := append(append(make([]*tableFile, 0, len(old)+1), old...), f)
	w.files.Store(&files)
}

// create builds a new table and publishes it at path. It returns errExist if
// path was created by someone else meanwhile.
func (w *Writer) create(path string, slots int) (err error) {
	w.size = HeaderSize + slots*SlotSize
	t, err := newShadow(path, w.size)
	if err != nil {
		return fmt.Errorf("shm: create %s: %w", path, err)
	}
	f, tmp, err := w.newFile(path)
	if err != nil {
		t.Close()
		return fmt.Errorf("shm: create %s: %w", path, err)
	}
	defer func() {
		if tmp != "" {
			unix.Unlink(tmp)
		}
		if err != nil {
			_ = f.close()
			t.Close()
			w.Table = nil
			w.files.Store(&[]*tableFile{})
		}
	}()
	t.n = slots
	w.Table = t
	w.addFile(f)
	for k, b := range Magic {
		t.mem[hdrMagic+k] = b
	}
	copy(f.mem[hdrMagic:hdrMagic+8], Magic[:])
	w.st32(hdrVersion, Version)
	w.st32(hdrHeaderSize, HeaderSize)
	w.st32(hdrSlotSize, SlotSize)
	w.st32(hdrSlotCount, uint32(slots))
	w.st32(hdrWriterPID, w.pid)
	w.st64(hdrCreatedNs, w.real())
	w.st64(hdrBeatNs, w.mono())
	if err := publish(f.fd, tmp, path); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errExist
		}
		return fmt.Errorf("shm: create %s: link: %w", path, err)
	}
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
	var f *tableFile
	defer func() {
		if err != nil {
			if w.Table != nil {
				w.Table.Close()
				w.Table = nil
			}
			if f != nil {
				_ = f.close()
			} else {
				unix.Close(fd)
			}
			w.files.Store(&[]*tableFile{})
			err = squatError(path, fmt.Errorf("shm: adopt %s: %w", path, err))
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if err := checkFile(&st, uint32(unix.Geteuid()), true); err != nil {
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
	mt, err := mapTable(fd, path, st.Size, unix.PROT_READ)
	if err != nil {
		return err
	}
	slots := mt.n
	_ = mt.Close()
	region, mem, err := mapWriterFile(fd, int(st.Size))
	if err != nil {
		return err
	}
	f = &tableFile{fd: fd, region: region, mem: mem, base: unsafe.Pointer(&mem[0]), dev: uint64(st.Dev), ino: uint64(st.Ino)}
	if _, err := checkHeader(mem); err != nil { // it changed under the lock
		return err
	}
	w.size = len(mem)
	if err := allocate(fd, path, w.size); err != nil {
		return err
	}
	t, err := newShadow(path, w.size)
	if err != nil {
		return err
	}
	copyWords(t.mem, mem)
	t.n = slots
	w.Table = t
	w.addFile(f)
	w.names = make([]string, t.n)
	w.index = make(map[string]int)
	for i := range t.n {
		if err := w.adoptSlot(i); err != nil {
			return err
		}
	}
	// The slots are not validated yet (the previous writer's processes
	// may have died meanwhile): until MarkAlive the table says its writer
	// is not alive. A word that still names a thread (a writer that died
	// without the kernel marking it) is marked here.
	if a := atomic.LoadUint32(w.u32(hdrWriterAlive)); WriterAliveWord(a) {
		w.st32(hdrWriterAlive, a&^writerTIDMask|WriterOwnerDied) // as the kernel would: TID cleared
	}
	w.st32(hdrWriterPID, w.pid)
	w.st64(hdrBeatNs, w.mono())
	w.adopted = true
	return nil
}

// copyWords copies src to dst with atomic 4-byte loads and stores.
func copyWords(dst, src []byte) {
	for k := 0; k+4 <= len(dst) && k+4 <= len(src); k += 4 {
		atomic.StoreUint32((*uint32)(unsafe.Pointer(&dst[k])), atomic.LoadUint32((*uint32)(unsafe.Pointer(&src[k]))))
	}
}

// adoptSlot repairs what a writer that died inside an update left behind in
// slot i (an odd seq, a half-freed slot) and records the slot's name.
func (w *Writer) adoptSlot(i int) error {
	off := slotOff(i)
	if s := atomic.LoadUint32(w.u32(off + slSeq)); s&1 != 0 {
		w.st32(off+slSeq, s+1)
	}
	if atomic.LoadUint32(w.u32(off+slState)) == uint32(StateFree) {
		for k := slPID; k < slReleased; k += 4 {
			if k != slSeq && atomic.LoadUint32(w.u32(off+k)) != 0 {
				rel := atomic.LoadUint64(w.u64(off + slReleased))
				w.begin(off)
				w.zeroSlot(off)
				w.st64(off+slReleased, rel)
				w.end(off)
				w.layoutChanged()
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

// restore writes the shadow into f: the header, then each slot inside its
// seqlock (the seq of every file moves with the shadow's), then its PID. A
// PID the exit fast path cleared meanwhile is cleared in f again (ClearPID
// clears the shadow before the files; restore stores f's PID before it
// rereads the shadow's). The caller holds mu.
func (w *Writer) restore(f *tableFile) {
	for k := 0; k < HeaderSize; k += 4 {
		f.st32(k, atomic.LoadUint32(w.u32(k)))
	}
	for i := range w.n {
		off := slotOff(i)
		w.begin(off)
		for k := slState; k < SlotSize; k += 4 {
			if k != slSeq {
				f.st32(off+k, atomic.LoadUint32(w.u32(off+k)))
			}
		}
		w.end(off)
		pid := atomic.LoadUint32(w.u32(off + slPID))
		f.st32(off+slPID, pid)
		if pid != 0 && atomic.LoadUint32(w.u32(off+slPID)) != pid {
			f.cas32(off+slPID, pid, 0)
		}
	}
}

// Check looks for what others did to the table files and repairs it; the
// writer calls it with its beat. A file truncated under the writer (a store
// into it faulted, or fstat shows it short) gets its size and pages back and
// the shadow's contents. If the table's name no longer names the writer's
// newest file (removed, or unlinked and replaced by nothing), a new file with
// the shadow's contents is published under the name, and every older file
// keeps receiving updates for the readers that mapped it. Each repair is
// described in the returned notes; err says what could not be repaired (a
// full file system, or the name taken by another file, which is left alone).
func (w *Writer) Check() (notes []string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return nil, nil
	}
	var errs []error
	files := *w.files.Load()
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(f.fd, &st); err != nil {
			errs = append(errs, fmt.Errorf("shm: %s: fstat: %w", w.path, err))
			continue
		}
		if st.Size >= int64(w.size) && !f.bad.Load() {
			continue
		}
		if err := unix.Ftruncate(f.fd, int64(w.size)); err != nil {
			errs = append(errs, fmt.Errorf("shm: %s: restore the size of the truncated table (%d of %d bytes): ftruncate: %w", w.path, st.Size, w.size, err))
			continue
		}
		if err := allocate(f.fd, w.path, w.size); err != nil {
			errs = append(errs, fmt.Errorf("shm: %s: restore the truncated table: %w", w.path, err))
			continue
		}
		f.bad.Store(false)
		w.restore(f)
		notes = append(notes, fmt.Sprintf("%s (inode %d) was truncated to %d bytes; its size and contents were restored", w.path, f.ino, st.Size))
	}
	cur := files[len(files)-1]
	var st unix.Stat_t
	switch err := unix.Lstat(w.path, &st); {
	case err == nil && uint64(st.Dev) == cur.dev && uint64(st.Ino) == cur.ino:
	case err == nil:
		errs = append(errs, fmt.Errorf("shm: %s names another file now (uid %d, mode %04o, inode %d; ours is inode %d): "+
			"new readers do not see this table; remove that file (rm %s) and it is put back within a second",
			w.path, st.Uid, st.Mode&0o7777, st.Ino, cur.ino, w.path))
	case errors.Is(err, unix.ENOENT):
		if err := w.relink(); err != nil {
			errs = append(errs, err)
			break
		}
		notes = append(notes, fmt.Sprintf("%s had been removed; the table was published there again (the readers of the removed file still get every update)", w.path))
	default:
		errs = append(errs, fmt.Errorf("shm: %s: lstat: %w", w.path, err))
	}
	return notes, errors.Join(errs...)
}

// maxFiles bounds how many table files a Writer keeps mapped (the name
// removed maxFiles-1 times).
const maxFiles = 16

// relink publishes a new file with the shadow's contents at w.path. The
// caller holds mu.
func (w *Writer) relink() error {
	if len(*w.files.Load()) >= maxFiles {
		return fmt.Errorf("shm: %s has been removed %d times; not publishing it again", w.path, maxFiles-1)
	}
	f, tmp, err := w.newFile(w.path)
	if err != nil {
		return fmt.Errorf("shm: %s was removed; publishing it again: %w", w.path, err)
	}
	if tmp != "" {
		defer unix.Unlink(tmp)
	}
	w.addFile(f)
	w.restore(f)
	if err := publish(f.fd, tmp, w.path); err != nil {
		// f stays among the files (ClearPID may be using it); a later
		// Check tries again with another file.
		return fmt.Errorf("shm: %s was removed; publishing it again: link: %w", w.path, err)
	}
	return nil
}

// begin and end bracket an update of the seqlock-protected bytes 4–127 of the
// slot at off: seq is odd in between. The caller holds mu.
func (w *Writer) begin(off int) {
	w.st32(off+slSeq, atomic.LoadUint32(w.u32(off+slSeq))+1)
}

func (w *Writer) end(off int) { w.begin(off) }

// zeroSlot zeroes every word of the slot at off but seq, state first. The
// caller holds mu and has called begin.
func (w *Writer) zeroSlot(off int) {
	w.st32(off+slState, 0)
	for k := slFlags; k < SlotSize; k += 4 {
		w.st32(off+k, 0)
	}
	w.st32(off+slPID, 0)
}

// storeName writes name NUL-padded into the slot at off with atomic 4-byte
// stores. The caller holds mu and has called begin.
func (w *Writer) storeName(off int, name string) {
	var b [slNameLen]byte
	copy(b[:NameMax], name)
	words := (*[nameWords]uint32)(unsafe.Pointer(&b))
	for k, v := range words {
		w.st32(off+slName+4*k, v)
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

// nameHash is FNV-1a (64 bits) of name, never 0: what a released slot
// remembers of its last service (slot offset 112).
func nameHash(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	if h == 0 {
		h = 1
	}
	return h
}

// pidStored is called after every store that may have changed the pid word
// at off (a slot's offset + 0): in every file it wakes the futex waiters on
// that word, then increments the header's changes word and wakes its
// waiters. The store comes first, so a reader that spins on the word sees
// it before any wake is made.
func (w *Writer) pidStored(off int) {
	for _, f := range *w.files.Load() {
		if !f.bad.Load() {
			futexWakeAll(unsafe.Add(f.base, off))
		}
	}
	w.changed()
}

// changed increments the header's changes word and wakes its waiters, in
// every file: after every store to a pid word or to writer_alive.
func (w *Writer) changed() {
	atomic.AddUint32(w.u32(hdrChanges), 1)
	for _, f := range *w.files.Load() {
		if !f.bad.Load() {
			f.add32(hdrChanges)
			futexWakeAll(unsafe.Add(f.base, hdrChanges))
		}
	}
}

// layoutChanged increments layout_seq, after a slot's name was written or
// cleared. The caller holds mu.
func (w *Writer) layoutChanged() {
	w.st64(hdrLayoutSeq, atomic.LoadUint64(w.u64(hdrLayoutSeq))+1)
}

// Alloc returns the slot of service, allocating one if the service has
// none: state StateStopped, last_status -1, everything else 0. The slot is,
// in this order of preference, the free slot this name last held (so a
// service that is freed and allocated again, as at every full stop and
// start of hbd, keeps its index), the lowest slot never used, the lowest
// free one. A service keeps its index until Free. An allocation increments
// layout_seq after the name is written. Errors wrap ErrBadName, ErrFull or
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
	h := nameHash(service)
	own, never, any := -1, -1, -1
	for i, n := range w.names {
		if n != "" {
			continue
		}
		off := slotOff(i)
		if atomic.LoadUint64(w.u64(off+slReleased)) == h {
			own = i
			break
		}
		if never < 0 && atomic.LoadUint32(w.u32(off+slSeq)) == 0 {
			never = i
		}
		if any < 0 {
			any = i
		}
	}
	for _, i := range []int{own, never, any} {
		if i < 0 {
			continue
		}
		off := slotOff(i)
		w.st32(off+slPID, 0)
		w.begin(off)
		w.zeroSlot(off)
		w.storeName(off, service)
		w.st32(off+slLastStatus, ^uint32(0)) // -1: no exit yet
		w.st64(off+slChangedNs, w.mono())
		w.st32(off+slState, uint32(StateStopped)) // last: marks the slot used
		w.end(off)
		w.layoutChanged()
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
// counting), but for the released-name word, which remembers the service so
// that Alloc gives it the same index again; then layout_seq is incremented.
// The index may be reused by Alloc for another name when no slot never used
// is left. Freeing a free slot does
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
	w.st64(off+slReleased, nameHash(name))
	w.end(off)
	w.layoutChanged()
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
	w.st64(off+slGeneration, gen)
	w.st64(off+slStartTime, startTime)
	w.st32(off+slState, uint32(state))
	w.st64(off+slChangedNs, w.mono())
	w.st32(off+slFlags, flags)
	w.end(off)
	w.st32(off+slPID, pid)
	w.pidStored(off)
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
	off := slotOff(i) + slPID
	if !atomic.CompareAndSwapUint32(w.u32(off), pid, 0) {
		return false
	}
	for _, f := range *w.files.Load() {
		f.cas32(off, pid, 0)
	}
	w.pidStored(off)
	return true
}

// Publish stores pid in slot i's PID word if the slot is incarnation gen
// and its PID word is 0: the moment a spawned service that declares its
// readiness becomes ready (it was recorded by Spawned with PID 0). It
// reports whether it stored.
func (w *Writer) Publish(i int, pid uint32, gen uint64) bool {
	if pid == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	if atomic.LoadUint64(w.u64(off+slGeneration)) != gen || atomic.LoadUint32(w.u32(off+slPID)) != 0 {
		return false
	}
	w.st32(off+slPID, pid)
	w.pidStored(off)
	return true
}

// MovePID records that incarnation gen of slot i has a new main process,
// pid, started at startTime (sd_notify's MAINPID=): under the seqlock
// start_time, then the PID word from old to pid by compare-and-swap, in
// one step. The word never reads 0 in between, and a word that is no
// longer old (old's exit cleared it) is left alone: the word never goes
// back from 0 to a PID here (Publish does that, for an incarnation known
// to be ready). With old 0 (a PID not yet published) only start_time
// changes. It reports whether the word now holds pid; false too when the
// slot is no longer incarnation gen.
func (w *Writer) MovePID(i int, old, pid uint32, gen, startTime uint64) bool {
	if pid == 0 {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	if atomic.LoadUint64(w.u64(off+slGeneration)) != gen {
		return false
	}
	w.begin(off)
	w.st64(off+slStartTime, startTime)
	w.end(off)
	if old == 0 || !atomic.CompareAndSwapUint32(w.u32(off+slPID), old, pid) {
		return false
	}
	for _, f := range *w.files.Load() {
		f.cas32(off+slPID, old, pid)
	}
	w.pidStored(off)
	return true
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
		w.st32(off+slState, uint32(state))
		w.st64(off+slChangedNs, w.mono())
	}
	w.st32(off+slLastStatus, uint32(status))
	w.st32(off+slLastPID, pid)
	w.st64(off+slLastExitNs, exitNs)
	w.st64(off+slExits, atomic.LoadUint64(w.u64(off+slExits))+1)
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
	w.st32(off+slState, uint32(s))
	w.st64(off+slChangedNs, w.mono())
	w.end(off)
}

// Live reports whether s is a state of a live incarnation (starting,
// running, stopping): the ones a slot may show only while its PID is not 0.
func (s State) Live() bool {
	return s == StateStarting || s == StateRunning || s == StateStopping
}

// SetStateOf sets slot i's state as SetState does, but only when it agrees
// with the slot: the incarnation is gen (0: any), and the PID word is not 0
// if s is Live, 0 if not. It reports whether it did. This is how another
// party's view (hbd's policy) reaches the slot without contradicting what
// the writer knows: a decision about an incarnation that has since exited,
// or been replaced, is dropped. (An exit clears the PID without the lock;
// one that lands just after the check is followed by RecordExit, which
// sets the state again.)
func (w *Writer) SetStateOf(i int, s State, gen uint64) bool {
	mustState(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	if gen != 0 && atomic.LoadUint64(w.u64(off+slGeneration)) != gen {
		return false
	}
	if (atomic.LoadUint32(w.u32(off+slPID)) != 0) != s.Live() {
		return false
	}
	w.begin(off)
	w.st32(off+slState, uint32(s))
	w.st64(off+slChangedNs, w.mono())
	w.end(off)
	return true
}

// SetFlags sets slot i's flags (SlotAdopted) under the seqlock.
func (w *Writer) SetFlags(i int, flags uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	off := w.mustSlot(i, true)
	w.begin(off)
	w.st32(off+slFlags, flags)
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
	w.st32(hdrFlags, f)
}

// Beat stores CLOCK_MONOTONIC in writer_beat_ns. The writer calls it at least
// once a second so readers can tell that the watcher itself is alive.
func (w *Writer) Beat() {
	if w.base == nil {
		return
	}
	w.st64(hdrBeatNs, w.mono())
}

// BeatWords returns the addresses of writer_beat_ns in the shadow and in
// each mapped table file, for a beater outside the Go runtime (the plugin's
// native beat thread) that stores CLOCK_MONOTONIC there itself instead of
// calling Beat. The set changes when Check publishes a new file; the
// addresses stay valid until Close, which the beater must not outlive. A
// file can be truncated under it: the beater must check that a word's page
// can be written (the plugin's asks the kernel first) before it stores.
func (w *Writer) BeatWords() []uintptr {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return nil
	}
	words := []uintptr{uintptr(unsafe.Pointer(w.u64(hdrBeatNs)))}
	for _, f := range *w.files.Load() {
		words = append(words, uintptr(unsafe.Add(f.base, hdrBeatNs)))
	}
	return words
}

// MarkAlive makes writer_alive say that this writer lives: it starts the
// thread that owns the word as a robust futex and stores the thread's TID.
// From then on the kernel sets WriterOwnerDied in the word when this
// process dies, by any means; Close stores the final value. A writer that
// adopted a table calls it once it has re-validated every slot (until then
// the word still says the previous writer died). Calling it again does
// nothing more.
func (w *Writer) MarkAlive() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		return fmt.Errorf("shm: %s: mark the writer alive: %w", w.path, ErrClosed)
	}
	v := w.alive
	if v == 0 {
		tid, err := w.robust.start()
		if err != nil {
			return fmt.Errorf("shm: %s: mark the writer alive: %w", w.path, err)
		}
		v = tid
	}
	w.st32(hdrWriterAlive, v)
	futexWakeFiles(w, hdrWriterAlive)
	w.changed()
	return nil
}

// futexWakeFiles wakes the waiters on the word at off in every file.
func futexWakeFiles(w *Writer, off int) {
	for _, f := range *w.files.Load() {
		if !f.bad.Load() {
			futexWakeAll(unsafe.Add(f.base, off))
		}
	}
}

// WriterAlive reports what the writer's own writer_alive word says.
func (w *Writer) WriterAlive() bool { return WriterAliveWord(atomic.LoadUint32(w.u32(hdrWriterAlive))) }

// Unlink removes the table's name if it still names this table's newest file
// (it may be called before or after Close). The mapping stays valid for every
// process that has it until each unmaps it; a later Create makes a new table.
func (w *Writer) Unlink() error {
	files := *w.files.Load()
	if len(files) == 0 {
		return fmt.Errorf("shm: unlink %s: no table file", w.path)
	}
	cur := files[len(files)-1]
	var there unix.Stat_t
	if err := unix.Lstat(w.path, &there); err != nil {
		return fmt.Errorf("shm: unlink %s: %w", w.path, err)
	}
	if uint64(there.Dev) != cur.dev || uint64(there.Ino) != cur.ino {
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
	// writer_alive: 0 after a clean shutdown, WriterOwnerDied otherwise
	// (the kernel would set it at the exit, but the files are unmapped by
	// then). Either way the robust list is emptied before the unmapping.
	if clean {
		w.st32(hdrWriterAlive, 0)
		w.st32(hdrWriterPID, 0)
	} else if a := atomic.LoadUint32(w.u32(hdrWriterAlive)); WriterAliveWord(a) {
		w.st32(hdrWriterAlive, a&^writerTIDMask|WriterOwnerDied) // as the kernel would: TID cleared
	}
	futexWakeFiles(w, hdrWriterAlive)
	w.changed()
	w.robust.end()
	path := w.path
	err := w.Table.Close()
	for _, f := range *w.files.Load() {
		if cerr := f.close(); cerr != nil && err == nil {
			err = fmt.Errorf("shm: close %s: %w", path, cerr)
		}
	}
	return err
}
