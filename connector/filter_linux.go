package connector

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Keeping the socket filter (compileExitFilter) in step with the watched set.
//
// The filter may lag behind the set: a process missing from it is still
// reported through its pidfd, without the connector's exit status, and a
// process left in it after its watch ended only lets a few more events in.
// An update is not cheap (the kernel checks and JIT-compiles every program
// attached: from about 0.1 ms for a few processes to about 1 ms for a
// thousand, more on a loaded machine), so updates are coalesced. One is
// decided at least filterInterval after the previous one, and at least
// filterCostRatio times as long as that one took, which keeps the updates of
// a mass respawn to a few percent of a core. Removals are put off by
// filterRemoveDelay in the hope that an addition carries them. Watch makes
// the update itself when it is due, so that a process watched on a quiet
// Watcher is in the filter before Watch returns. Otherwise the connector
// goroutine makes it: the socket's read deadline is set to when the update
// is due, which wakes that goroutine out of recv.

const (
	// filterInterval is the least time between two filter updates.
	filterInterval = 10 * time.Millisecond
	// filterCostRatio is the least time between two filter updates, in
	// multiples of the time the first one took, up to filterMaxPause.
	filterCostRatio = 50
	filterMaxPause  = time.Second
	// filterRemoveDelay is how long the removal of a process from the filter
	// may wait for an update that happens anyway.
	filterRemoveDelay = time.Second
	// maxDiscard bounds startFilter's draining of the socket.
	maxDiscard = 1 << 12
)

// startFilter attaches the filter for the empty set, then discards whatever
// was queued before it was there (nothing is watched yet). Called by
// NewWatcher before the goroutines start. Without a filter the Watcher works
// as well, only with every exit on the machine delivered.
func (w *Watcher) startFilter() {
	if w.opt.NoFilter {
		return
	}
	if h := w.opt.hooks; h != nil && h.filterEvery != 0 {
		w.filterEvery, w.filterFixed = h.filterEvery, true
	}
	w.filterPause = w.filterEvery
	w.filtering = true
	w.setGen = 1 // differs from filterGen: the first update attaches
	w.updateFilter()
	w.filterMu.Lock()
	on := w.filterOn
	w.filterMu.Unlock()
	if !on {
		w.filtering = false
		return
	}
	w.nl.discard(maxDiscard)
}

// filterChangedLocked records a change of the watched set (an addition, or a
// removal) and arranges for the filter to follow. It returns true when the
// caller should update the filter itself now (see Watch); otherwise, if
// needed, it sets the socket's read deadline so that the connector goroutine
// does it when due. Called with mu held.
func (w *Watcher) filterChangedLocked(added bool) (updateNow bool) {
	if !w.filtering || w.closed {
		return false
	}
	w.setGen++
	now := time.Now()
	due := w.filterLast.Add(w.filterPause)
	if added && !now.Before(due) {
		w.filterLast = now
		return true
	}
	if !added {
		if later := now.Add(filterRemoveDelay); later.After(due) {
			due = later
		}
	}
	w.wakeFilterLocked(due)
	return false
}

// wakeFilterLocked makes the connector goroutine call filterDue at due, or
// earlier if that was already asked for: recv fails with
// os.ErrDeadlineExceeded once the socket's read deadline has passed (at once
// for a time already past). Called with mu held.
func (w *Watcher) wakeFilterLocked(due time.Time) {
	if !w.filterWake.IsZero() && !due.Before(w.filterWake) {
		return
	}
	w.filterWake = due
	if err := w.nl.conn.SetReadDeadline(due); err != nil {
		w.filterWake = time.Time{} // closed
	}
}

// filterDue runs on the connector goroutine when the read deadline set by
// wakeFilterLocked has passed: it clears the deadline and brings the filter
// up to date, or, if an update was decided less than filterPause ago (by
// Watch, meanwhile), waits for the end of that pause.
func (w *Watcher) filterDue() {
	w.mu.Lock()
	w.filterWake = time.Time{}
	_ = w.nl.conn.SetReadDeadline(time.Time{})
	update := false
	if w.setGen != w.filterGen {
		now := time.Now()
		if due := w.filterLast.Add(w.filterPause); now.Before(due) {
			w.wakeFilterLocked(due)
		} else {
			w.filterLast = now
			update = true
		}
	}
	w.mu.Unlock()
	if update {
		w.updateFilter()
	}
}

// updateFilter compiles the filter for the watched set and attaches it in
// place of the previous one (SO_ATTACH_FILTER replaces atomically), or
// detaches it when the set is too large for one program, so that every exit
// event is delivered. A failure is passed to OnError and leaves no filter
// rather than a stale one. Safe from any goroutine but never with mu held;
// updates are serialized, and one that finds the set unchanged since the last
// does nothing.
func (w *Watcher) updateFilter() {
	w.filterMu.Lock()
	defer w.filterMu.Unlock()
	w.mu.Lock()
	gen := w.setGen
	if w.closed || gen == w.filterGen {
		w.mu.Unlock()
		return
	}
	w.filterSet = w.filterSet[:0]
	w.byPID.each(func(wt *watch) {
		if !wt.child {
			w.filterSet = append(w.filterSet, uint32(wt.pid))
		}
	})
	var parent uint32
	if w.children > 0 {
		parent = uint32(os.Getpid())
	}
	w.mu.Unlock()

	start := time.Now()
	prog, ok := compileExitFilterFor(w.filterSet, parent)
	var err error
	switch {
	case ok:
		if err = w.nl.conn.SetBPF(prog); err == nil {
			if !w.filterOn {
				w.log.Debug("proc connector socket filter attached", "processes", len(w.filterSet), "instructions", len(prog))
			}
			w.filterOn = true
			w.filterTGIDs.Store(int64(len(w.filterSet)))
			w.filterUpdates.Add(1)
		}
	case w.filterOn:
		if err = w.nl.conn.RemoveBPF(); err == nil {
			w.log.Info("proc connector socket filter removed: too many processes for one program; every exit is delivered",
				"processes", len(w.filterSet))
			w.filterOn = false
			w.filterTGIDs.Store(-1)
			w.filterUpdates.Add(1)
		}
	}
	if err != nil {
		if w.isDone() {
			return
		}
		err = fmt.Errorf("connector: socket filter for %d processes: %w", len(w.filterSet), err)
		if w.filterOn && w.nl.conn.RemoveBPF() == nil {
			w.filterOn = false
			w.filterTGIDs.Store(-1)
		}
		w.survive(err, false, 0)
		return // filterGen stays behind: the next change tries again
	}
	cost := time.Since(start)
	w.mu.Lock()
	w.filterGen = gen
	if !w.filterFixed {
		w.filterPause = min(max(w.filterEvery, filterCostRatio*cost), filterMaxPause)
	}
	w.mu.Unlock()
}

// discard drops up to n datagrams already queued on the socket, without
// waiting for more.
func (s *nlSocket) discard(n int) {
	once := func(fd uintptr) bool {
		s.doRead(fd)
		return true // never wait
	}
	for range n {
		if err := s.rc.Read(once); err != nil || s.errno == unix.EAGAIN {
			return
		}
	}
}
