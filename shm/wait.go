package shm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WriterAlive reports whether the table's writer lives: the writer_alive
// word is not 0 and has WriterOwnerDied clear. It is one atomic load. The
// kernel itself sets WriterOwnerDied when the writer dies (SIGKILL
// included), so a false here is never late by more than the writer's own
// exit; a true means the writer's process exists, not that it is
// responsive (writer_beat_ns tells that).
func (t *Table) WriterAlive() bool {
	if t.base == nil {
		return false
	}
	return WriterAliveWord(atomic.LoadUint32(t.u32(hdrWriterAlive)))
}

// Alive reports whether slot i's service is alive as far as a live writer
// says: its pid word is not 0 and the writer is alive. Two atomic loads, the
// pid word first. A pid read while the writer was alive cannot name a
// recycled process (invariant 1); one read after the writer died might, so
// it does not count.
func (t *Table) Alive(i int) bool {
	return t.PID(i) != 0 && t.WriterAlive()
}

// LayoutSeq returns the header's layout_seq: it changes after every slot
// assignment, release or reuse.
func (t *Table) LayoutSeq() uint64 {
	if t.base == nil {
		return 0
	}
	return atomic.LoadUint64(t.u64(hdrLayoutSeq))
}

// LayoutChanged reports whether layout_seq differs from *seq, and stores the
// current value in *seq. A peer that cached slot indexes (Lookup) calls it
// after reading a pid word: if it reports true, the indexes may name other
// services now and must be looked up again, and the pid just read is not
// to be trusted. One atomic load.
func (t *Table) LayoutChanged(seq *uint64) bool {
	v := t.LayoutSeq()
	changed := v != *seq
	*seq = v
	return changed
}

// Changes returns the header's changes word, incremented after every store
// to a slot's pid word.
func (t *Table) Changes() uint32 {
	if t.base == nil {
		return 0
	}
	return atomic.LoadUint32(t.u32(hdrChanges))
}

// ErrWriterDead is returned by a wait that was woken while the table's
// writer is not alive (WriterAlive false): nobody would store the word it
// waits on. The writer's own death wakes nobody (the kernel marks
// writer_alive without a wake); hbd, when it sees the plugin die, wakes
// every waiter (Table.Wake), and so does a writer that shuts down or
// starts.
var ErrWriterDead = errors.New("shm: the table's writer is not alive")

// Wake wakes every process waiting on t's table (the changes word,
// writer_alive and every used slot's pid word) without changing anything,
// so that each looks at writer_alive. hbd calls it when it sees its plugin
// die. It needs only the read-only mapping.
func (t *Table) Wake() {
	if t.base == nil {
		return
	}
	futexWakeAll(unsafe.Pointer(t.u32(hdrChanges)))
	futexWakeAll(unsafe.Pointer(t.u32(hdrWriterAlive)))
	for i := 0; i < t.n; i++ {
		if atomic.LoadUint32(t.u32(slotOff(i)+slState)) != uint32(StateFree) {
			futexWakeAll(unsafe.Pointer(t.u32(slotOff(i) + slPID)))
		}
	}
}

// maxSleep bounds one futex sleep of a wait, so that a cancelled context is
// noticed within it (a futex sleep cannot be interrupted from another
// goroutine). It delays only the cancellation, never a change.
const maxSleep = 100 * time.Millisecond

// sleepFor returns the timeout of the next futex sleep for ctx: at most
// maxSleep, at most until ctx's deadline; ok is false if ctx is done.
func sleepFor(ctx context.Context) (ts unix.Timespec, err error) {
	if err := ctx.Err(); err != nil {
		return ts, err
	}
	d := maxSleep
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < d {
			d = left
		}
		if d <= 0 {
			return ts, context.DeadlineExceeded
		}
	}
	return unix.NsecToTimespec(d.Nanoseconds()), nil
}

// Wait sleeps until slot i's pid word differs from seen, and returns the
// new value. It blocks in the kernel (a shared FUTEX_WAIT on the word,
// which works on the read-only mapping); the writer wakes it after every
// store to the word. It ends with ctx's error when ctx is done, and with
// ErrWriterDead when woken while the writer is not alive. A writer that
// dies wakes nobody by itself (hbd does, when it lives): a peer that must
// notice that within a bound also bounds the wait (ctx).
func (t *Table) Wait(ctx context.Context, i int, seen uint32) (uint32, error) {
	if uint(i) >= uint(t.n) {
		return 0, fmt.Errorf("shm: wait on slot %d: %w [0,%d)", i, ErrIndex, t.n)
	}
	p := t.u32(slotOff(i) + slPID)
	return t.waitWord(ctx, p, seen)
}

// WaitChanges sleeps until the changes word differs from seen (some slot's
// pid word was stored since) and returns its new value; see Wait.
func (t *Table) WaitChanges(ctx context.Context, seen uint32) (uint32, error) {
	if t.base == nil {
		return 0, ErrClosed
	}
	return t.waitWord(ctx, t.u32(hdrChanges), seen)
}

func (t *Table) waitWord(ctx context.Context, p *uint32, seen uint32) (uint32, error) {
	for {
		if v := atomic.LoadUint32(p); v != seen {
			return v, nil
		}
		ts, err := sleepFor(ctx)
		if err != nil {
			return seen, err
		}
		err = futexWaitOn(p, seen, &ts)
		switch {
		case err == nil:
			if atomic.LoadUint32(p) == seen && !t.WriterAlive() {
				return seen, ErrWriterDead
			}
		case !errors.Is(err, unix.ETIMEDOUT) && !errors.Is(err, unix.EINTR):
			return seen, fmt.Errorf("shm: futex wait: %w", err)
		}
	}
}

// Watch is one slot of WaitAny: the slot's index and the pid the caller
// last saw in it.
type Watch struct {
	Slot int
	PID  uint32
}

// WaitAny sleeps until the pid word of one of the watched slots differs
// from its Watch.PID, and returns the position in ws of such a slot (more
// may have changed: look at them all). It waits on all of them at once
// with futex_waitv (Linux 5.16; at most 128 slots). See Wait.
func (t *Table) WaitAny(ctx context.Context, ws []Watch) (int, error) {
	if len(ws) == 0 || len(ws) > futexWaitvMax {
		return -1, fmt.Errorf("shm: wait on %d slots: 1 to %d", len(ws), futexWaitvMax)
	}
	fw := make([]futexWaitv, len(ws))
	for k, w := range ws {
		if uint(w.Slot) >= uint(t.n) {
			return -1, fmt.Errorf("shm: wait on slot %d: %w [0,%d)", w.Slot, ErrIndex, t.n)
		}
		fw[k] = futexWaitv{val: uint64(w.PID), uaddr: uint64(uintptr(unsafe.Pointer(t.u32(slotOff(w.Slot) + slPID)))), flags: futex2SizeU32}
	}
	for {
		for k, w := range ws {
			if t.PID(w.Slot) != w.PID {
				return k, nil
			}
		}
		ts, err := sleepFor(ctx)
		if err != nil {
			return -1, err
		}
		dl := unix.NsecToTimespec(int64(MonotonicNs()) + ts.Nano())
		k, err := futexWaitvOn(fw, &dl)
		switch {
		case err == nil && k >= 0:
			if t.PID(ws[k].Slot) == ws[k].PID && !t.WriterAlive() {
				return -1, ErrWriterDead
			}
		case err != nil && !errors.Is(err, unix.ETIMEDOUT) && !errors.Is(err, unix.EINTR):
			return -1, fmt.Errorf("shm: futex_waitv: %w", err)
		}
	}
}
