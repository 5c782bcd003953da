package shim

import (
	"context"
	"sync"

	"github.com/hbshim/hb/plugin"
)

// ringSize is how many past events a subscriber can ask to be replayed.
const ringSize = 4096

// subBuffer is the live-event headroom of a subscriber's channel on top of
// its replay.
const subBuffer = 16384

// eventLog numbers events, keeps the last ringSize of them and fans each out
// to the subscribers. emit never blocks: a subscriber whose channel is full is
// dropped (its channel closed) and must resubscribe with the last Seq it saw.
type eventLog struct {
	mu     sync.Mutex
	seq    uint64                   // last Seq given out; guarded by mu
	ring   [ringSize]plugin.Event   // event with Seq n is at ring[n%ringSize]; guarded by mu
	subs   map[*subscriber]struct{} // guarded by mu
	closed bool                     // guarded by mu
}

type subscriber struct {
	ch   chan plugin.Event
	done bool        // channel closed; guarded by eventLog.mu
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
		select {
		case s.ch <- ev:
		default:
			// Too slow: never let a subscriber hold up the exit path.
			l.dropLocked(s)
		}
	}
	return ev
}

func (l *eventLog) dropLocked(s *subscriber) {
	if !s.done {
		s.done = true
		close(s.ch)
		if s.stop != nil {
			s.stop()
		}
	}
	delete(l.subs, s)
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
	s := &subscriber{ch: make(chan plugin.Event, n+subBuffer)}
	for q := first; q <= l.seq; q++ {
		s.ch <- l.ring[q%ringSize]
	}
	l.subs[s] = struct{}{}
	s.stop = context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.dropLocked(s)
		l.mu.Unlock()
	})
	return s.ch, nil
}

// close ends every subscription; later subscribe calls fail.
func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for s := range l.subs {
		l.dropLocked(s)
	}
}
