package shm

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations and flags (linux/futex.h); x/sys/unix has the system
// call numbers but not these.
const (
	futexWait     = 0
	futexWake     = 1
	futex2SizeU32 = 0x02
	// futexWaitvMax is FUTEX_WAITV_MAX: futex_waitv waits on at most 128 words.
	futexWaitvMax = 128
)

// futexWakeAll wakes every waiter on the shared futex word at p (FUTEX_WAKE
// without FUTEX_PRIVATE_FLAG: the key is the file's inode and offset, so the
// readers' read-only mappings of the file share it). Errors are ignored: a
// wake that fails (the file was truncated: EFAULT) wakes nobody, and the
// readers' waits are bounded by their timeouts.
func futexWakeAll(p unsafe.Pointer) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(p), futexWake, math.MaxInt32, 0, 0, 0)
}

// futexWaitOn sleeps while the shared futex word at p holds val, for at most
// timeout (relative; nil: forever). It returns nil when woken or when the
// word did not hold val, unix.ETIMEDOUT, or unix.EINTR.
func futexWaitOn(p *uint32, val uint32, timeout *unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(p)), futexWait, uintptr(val), uintptr(unsafe.Pointer(timeout)), 0, 0)
	runtime.KeepAlive(timeout)
	switch e {
	case 0, unix.EAGAIN:
		return nil
	default:
		return e
	}
}

// futexWaitv is one element of futex_waitv(2)'s array.
type futexWaitv struct {
	val      uint64
	uaddr    uint64
	flags    uint32
	reserved uint32
}

// futexWaitvOn sleeps until one of the words in ws no longer holds its val
// or is woken, or until the CLOCK_MONOTONIC deadline (nil: none). It returns
// the index of a woken word, -1 when a word already differed, or an error
// (ETIMEDOUT, EINTR, ENOSYS before Linux 5.16).
func futexWaitvOn(ws []futexWaitv, deadline *unix.Timespec) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_FUTEX_WAITV, uintptr(unsafe.Pointer(&ws[0])), uintptr(len(ws)), 0,
		uintptr(unsafe.Pointer(deadline)), uintptr(unix.CLOCK_MONOTONIC), 0)
	runtime.KeepAlive(ws)
	runtime.KeepAlive(deadline)
	switch e {
	case 0:
		return int(r), nil
	case unix.EAGAIN:
		return -1, nil
	default:
		return -1, e
	}
}

// The robust list (set_robust_list(2)) that makes the kernel mark
// writer_alive when the writer dies.
//
// Each table file of a Writer is mapped right after a private anonymous page
// of its own; the last 8 bytes of that page are the file's entry in the
// list, so that every entry lies robustFutexOffset bytes before its file's
// writer_alive word, as the kernel's one futex_offset requires. The head
// lives in a private page of its own. One OS thread registers the head and
// does nothing else; its TID is the value of writer_alive. When that thread
// exits, which every death of the process includes (SIGKILL too), the
// kernel walks the list during the exit, before the address space is torn
// down, and in every word that holds the thread's TID sets
// FUTEX_OWNER_DIED (0x40000000).
const (
	robustEntryBack   = 8                                // the entry: the last 8 bytes before the file
	robustFutexOffset = robustEntryBack + hdrWriterAlive // entry + offset = &writer_alive
	robustHeadLen     = 24                               // sizeof(struct robust_list_head)
)

// robust is the robust-list head and the thread that registered it.
type robust struct {
	page []byte         // private page; the head at offset 0
	head unsafe.Pointer // &page[0]: {next, futex_offset, list_op_pending}
	tid  atomic.Uint32  // the registered thread's TID; 0 before start
	stop chan struct{}  // closed by end
	done chan struct{}  // closed when the thread has unregistered the head
}

func newRobust() (*robust, error) {
	page, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap the robust-list head: %w", err)
	}
	r := &robust{page: page, head: unsafe.Pointer(&page[0])}
	// An empty list points at itself.
	*(*uintptr)(r.head) = uintptr(r.head)
	*(*int64)(unsafe.Add(r.head, 8)) = robustFutexOffset
	return r, nil
}

// link adds the entry at e (the last 8 bytes of a file's private page) to
// the front of the list. The entry's next is set before the head points at
// it, so the list is whole at every instant the kernel might walk it.
func (r *robust) link(e unsafe.Pointer) {
	next := atomic.LoadUintptr((*uintptr)(r.head))
	atomic.StoreUintptr((*uintptr)(e), next)
	atomic.StoreUintptr((*uintptr)(r.head), uintptr(e))
}

// start runs the thread that registers the head and returns its TID.
func (r *robust) start() (uint32, error) {
	if tid := r.tid.Load(); tid != 0 {
		return tid, nil
	}
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	type result struct {
		tid uint32
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer close(r.done)
		// The thread's previous list (the C library's, for its own robust
		// mutexes) is put back when the writer closes.
		var old, oldLen uintptr
		_, _, e := unix.RawSyscall(unix.SYS_GET_ROBUST_LIST, 0, uintptr(unsafe.Pointer(&old)), uintptr(unsafe.Pointer(&oldLen)))
		if e != 0 {
			res <- result{err: fmt.Errorf("get_robust_list: %w", e)}
			runtime.UnlockOSThread()
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, uintptr(r.head), robustHeadLen, 0); e != 0 {
			res <- result{err: fmt.Errorf("set_robust_list: %w", e)}
			runtime.UnlockOSThread()
			return
		}
		res <- result{tid: uint32(unix.Gettid())}
		<-r.stop
		// The list is empty by now (end); with the old list back the
		// thread may serve the runtime again, otherwise it exits with the
		// goroutine.
		if _, _, e := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, old, robustHeadLen, 0); e == 0 {
			runtime.UnlockOSThread()
		}
	}()
	out := <-res
	if out.err != nil {
		<-r.done
		r.stop = nil
		return 0, out.err
	}
	r.tid.Store(out.tid)
	return out.tid, nil
}

// end unregisters the head (the thread puts its old list back) and unmaps
// it. The caller has already stored writer_alive's final value.
func (r *robust) end() {
	atomic.StoreUintptr((*uintptr)(r.head), uintptr(r.head))
	if r.stop != nil {
		close(r.stop)
		<-r.done
		r.stop = nil
	}
	r.tid.Store(0)
	_ = unix.Munmap(r.page)
}

// mapWriterFile maps size bytes of fd read-write and shared right after a
// private page of its own (whose last bytes are the file's robust-list
// entry). It returns the whole region (unmapped as one) and the file part.
func mapWriterFile(fd int, size int) (region []byte, mem []byte, err error) {
	page := os.Getpagesize()
	region, err = unix.Mmap(-1, 0, page+size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %d bytes: %w", page+size, err)
	}
	addr := unsafe.Pointer(&region[page])
	p, err := unix.MmapPtr(fd, 0, addr, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED)
	if err == nil && p != addr {
		err = errors.New("the kernel placed a MAP_FIXED mapping elsewhere")
	}
	if err != nil {
		_ = unix.Munmap(region)
		return nil, nil, fmt.Errorf("mmap %d bytes: %w", size, err)
	}
	return region, unsafe.Slice((*byte)(addr), size), nil
}
