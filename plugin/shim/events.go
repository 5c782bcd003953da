package shim

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hbshim/hb/plugin"
)

// ringSize is how many past events a subscriber can ask to be replayed.
const ringSize = 4096

// subBuffer is how many live events a subscriber may lag behind, on top of
// its replay, before it is dropped.
const subBuffer = 16384

// chanBuffer is the buffer of a subscriber's channel, and the size of the
// blocks of its backlog: events that do not fit in the channel wait in
// blocks allocated as the backlog grows and dropped as it drains. An idle
// subscriber costs chanBuffer events, not its whole allowance.
const chanBuffer = 256

// eventLog numbers events, keeps the last ringSize of them and fans each out
// to the subscribers. emit never blocks: a subscriber that falls more than
// its allowance behind is dropped (it receives what was queued for it, then
// its channel is closed) and must resubscribe with the last Seq it saw.
type eventLog struct {
	mu      sync.Mutex
	seq     uint64                   // last Seq given out; guarded by mu
	ring    [ringSize]plugin.Event   // event with Seq n is at ring[n%ringSize]; guarded by mu
	subs    map[*subscriber]struct{} // guarded by mu
	closed  bool                     // guarded by mu
	dropped uint64                   // subscribers dropped for falling behind; guarded by mu
	// epoch counts subscriptions: a change means an hbd has subscribed
	// since (headless respawn counts restart).
	epoch atomic.Uint64
}

// headless reports whether no one is subscribed (no hbd is connected), and
// the subscription epoch.
func (l *eventLog) headless() (bool, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.subs) == 0, l.epoch.Load()
}

// subscriber is one subscription. Its events reach ch directly while they
// fit; when ch is full they are appended to the backlog and a pump
// goroutine, running only until the backlog is empty, moves them into ch in
// order.
type subscriber struct {
	ch    chan plugin.Event
	limit int // most events ch and the backlog may hold together

	// backlog holds the events not yet in ch, oldest first, in blocks of
	// chanBuffer (only the last one may be partly filled); the pump has
	// sent backlog[0][:head]. queued counts the events not yet sent,
	// including those the pump is sending. All guarded by eventLog.mu.
	backlog [][]plugin.Event
	head    int
	queued  int
	pumping bool // the pump runs: it alone sends on and closes ch; guarded by eventLog.mu
	ended   bool // no more events are added; guarded by eventLog.mu
	done    bool // ch is closed; guarded by eventLog.mu
	// gone is closed when the reader left (its context ended): the pump
	// drops the backlog instead of waiting to deliver it.
	gone chan struct{}
	stop func() bool // unregisters the ctx callback; set under eventLog.mu
}

func newEventLog() *eventLog {
	return &eventLog{subs: map[*subscriber]struct{}{}}
}

// emit assigns ev the next Seq, stores it and hands it to every subscriber.
func (l *eventLog) emit(ev plugin.Event) plugin.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	ev.Seq = l.seq
	l.ring[ev.Seq%ringSize] = ev
	for s := range l.subs {
		l.deliverLocked(s, ev)
	}
	return ev
}

// deliverLocked passes ev to s: into its channel when nothing is queued
// before it and there is room, else into its backlog. A subscriber over its
// allowance is dropped rather than allowed to hold up the exit path.
func (l *eventLog) deliverLocked(s *subscriber, ev plugin.Event) {
	if !s.pumping {
		select {
		case s.ch <- ev:
			return
		default:
		}
	}
	if len(s.ch)+s.queued >= s.limit {
		l.dropped++
		l.endLocked(s, false)
		return
	}
	if n := len(s.backlog); n == 0 || len(s.backlog[n-1]) == chanBuffer {
		s.backlog = append(s.backlog, make([]plugin.Event, 0, chanBuffer))
	}
	last := &s.backlog[len(s.backlog)-1]
	*last = append(*last, ev)
	s.queued++
	if !s.pumping {
		s.pumping = true
		go l.pump(s)
	}
}

// pump moves s's backlog into its channel, a block at a time, then
// returns; it closes the channel when s has ended meanwhile. It sends
// without the lock: emit only appends past what the pump was given.
func (l *eventLog) pump(s *subscriber) {
	l.mu.Lock()
	for s.queued > 0 {
		block, from := s.backlog[0], s.head
		to := len(block)
		l.mu.Unlock()
		sent := from
		for sent < to {
			select {
			case s.ch <- block[sent]:
				sent++
				continue
			case <-s.gone:
			}
			break
		}
		l.mu.Lock()
		if sent < to {
			break // the reader left: the rest is dropped below
		}
		s.queued -= to - from
		s.head = to
		if to == chanBuffer {
			s.backlog[0] = nil
			s.backlog = s.backlog[1:]
			s.head = 0
		}
	}
	// Nothing is kept once the backlog has drained: the next burst
	// allocates afresh.
	s.backlog, s.head, s.queued = nil, 0, 0
	s.pumping = false
	if s.ended {
		l.closeLocked(s)
	}
	l.mu.Unlock()
}

// endLocked ends s: no event is added to it any more. A subscriber that
// fell behind (gone false) still receives its backlog before its channel is
// closed; one whose reader left has its backlog dropped.
func (l *eventLog) endLocked(s *subscriber, gone bool) {
	delete(l.subs, s)
	if gone {
		select {
		case <-s.gone:
		default:
			close(s.gone)
		}
	}
	s.ended = true
	if !s.pumping {
		l.closeLocked(s)
	}
}

// closeLocked closes s's channel, once. Until then the ctx callback stays
// registered, so that a reader leaving stops a pump that still waits on it.
func (l *eventLog) closeLocked(s *subscriber) {
	if s.done {
		return
	}
	s.done = true
	close(s.ch)
	if s.stop != nil {
		s.stop()
	}
}

// droppedSubscribers is how many subscribers were dropped for falling behind.
func (l *eventLog) droppedSubscribers() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// lastSeq is the Seq of the newest event (0 before the first).
func (l *eventLog) lastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// subscribe returns a channel that first receives the buffered events with
// Seq > after (at most ringSize; older ones are gone, which the caller sees as
// a gap in Seq), then live ones, until ctx ends or the log is closed.
func (l *eventLog) subscribe(ctx context.Context, after uint64) (<-chan plugin.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errClosed
	}
	first := after + 1
	if l.seq >= ringSize && first <= l.seq-ringSize {
		first = l.seq - ringSize + 1
	}
	n := 0
	if first <= l.seq {
		n = int(l.seq - first + 1)
	}
	s := &subscriber{ch: make(chan plugin.Event, chanBuffer), limit: n + subBuffer, gone: make(chan struct{})}
	for q := first; q <= l.seq; q++ {
		l.deliverLocked(s, l.ring[q%ringSize])
	}
	l.subs[s] = struct{}{}
	l.epoch.Add(1)
	s.stop = context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.endLocked(s, true)
		l.mu.Unlock()
	})
	return s.ch, nil
}

// close ends every subscription (each still receives what was queued for
// it); later subscribe calls fail.
func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for s := range l.subs {
		l.endLocked(s, false)
	}
}
