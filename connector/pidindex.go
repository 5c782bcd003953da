package connector

import "sync/atomic"

// pidIndex is the Watcher's TGID → watch map. It finds a watch without a
// lock: the exit tracepoint's
// reader looks a record's process up in it, so that the store of 0 that
// follows waits for no goroutine of the Watcher (a thread holding the
// Watcher's mutex can be preempted for milliseconds while every CPU is
// busy). Writers hold the Watcher's mutex; readers hold nothing.
//
// An open-addressing table with linear probing: a slot holds a watch, the
// tombstone of a removed one, or nil, which ends a probe. It is replaced
// by a larger table, built beside it and then published, once live and
// removed entries fill half of it; a reader still probing the old table
// finds what it held then.
type pidIndex struct {
	t atomic.Pointer[pidTable]
}

type pidTable struct {
	slots []atomic.Pointer[watch]
	used  int // live entries and tombstones: writers only
	live  int // writers only
}

// tombstone marks a removed entry: a probe goes on past it.
var tombstone = &watch{pid: -1}

const minPIDTable = 64

func pidSlot(pid int32, mask int) int {
	h := uint32(pid) * 0x9E3779B1 // Fibonacci hashing spreads consecutive PIDs
	return int(h>>7) & mask
}

// get returns the watch indexed under pid, or nil.
func (x *pidIndex) get(pid int32) *watch {
	t := x.t.Load()
	if t == nil {
		return nil
	}
	mask := len(t.slots) - 1
	for i, n := pidSlot(pid, mask), 0; n < len(t.slots); i, n = (i+1)&mask, n+1 {
		switch wt := t.slots[i].Load(); {
		case wt == nil:
			return nil
		case wt != tombstone && wt.pid == pid:
			return wt
		}
	}
	return nil
}

// set indexes wt under its pid, in place of any watch there. The caller
// holds the Watcher's mutex.
func (x *pidIndex) set(wt *watch) {
	t := x.t.Load()
	if t == nil || 2*(t.used+1) > len(t.slots) {
		t = x.grow(t)
	}
	mask := len(t.slots) - 1
	free := -1
	for i, n := pidSlot(wt.pid, mask), 0; n < len(t.slots); i, n = (i+1)&mask, n+1 {
		switch cur := t.slots[i].Load(); {
		case cur == nil:
			if free < 0 {
				free = i
				t.used++
			}
			t.slots[free].Store(wt)
			t.live++
			return
		case cur == tombstone:
			if free < 0 {
				free = i
			}
		case cur.pid == wt.pid:
			t.slots[i].Store(wt)
			return
		}
	}
	panic("connector: pidIndex without a free slot") // grow keeps half the table nil
}

// each calls f with every watch indexed. The caller holds the Watcher's
// mutex.
func (x *pidIndex) each(f func(*watch)) {
	if t := x.t.Load(); t != nil {
		for i := range t.slots {
			if wt := t.slots[i].Load(); wt != nil && wt != tombstone {
				f(wt)
			}
		}
	}
}

// del removes wt, if it is the watch indexed under its pid. The caller
// holds the Watcher's mutex.
func (x *pidIndex) del(wt *watch) {
	t := x.t.Load()
	if t == nil {
		return
	}
	mask := len(t.slots) - 1
	for i, n := pidSlot(wt.pid, mask), 0; n < len(t.slots); i, n = (i+1)&mask, n+1 {
		switch cur := t.slots[i].Load(); {
		case cur == nil:
			return
		case cur == wt:
			t.slots[i].Store(tombstone)
			t.live--
			return
		}
	}
}

// grow publishes a table with room for twice the live entries of t (at
// least minPIDTable slots) and no tombstones, and returns it.
func (x *pidIndex) grow(t *pidTable) *pidTable {
	n := minPIDTable
	if t != nil {
		for n < 4*(t.live+1) {
			n *= 2
		}
	}
	nt := &pidTable{slots: make([]atomic.Pointer[watch], n)}
	mask := n - 1
	if t != nil {
		for i := range t.slots {
			wt := t.slots[i].Load()
			if wt == nil || wt == tombstone {
				continue
			}
			j := pidSlot(wt.pid, mask)
			for nt.slots[j].Load() != nil {
				j = (j + 1) & mask
			}
			nt.slots[j].Store(wt)
			nt.used++
			nt.live++
		}
	}
	x.t.Store(nt)
	return nt
}
