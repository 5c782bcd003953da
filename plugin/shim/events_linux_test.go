package shim

import (
	"context"
	"testing"
	"time"

	"github.com/hbshim/hb/plugin"
)

// drain returns the Seqs of the events ch holds now, without waiting (the
// channel's buffer only, not a backlog still being pumped).
func drain(ch <-chan plugin.Event) []uint64 {
	var seqs []uint64
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return seqs
			}
			seqs = append(seqs, ev.Seq)
		default:
			return seqs
		}
	}
}

// recvUntil receives from ch until an event with Seq last (included) or
// until ch is closed (last 0), and returns the Seqs received.
func recvUntil(t *testing.T, ch <-chan plugin.Event, last uint64) []uint64 {
	t.Helper()
	var seqs []uint64
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				if last != 0 {
					t.Fatalf("channel closed after %d events, before Seq %d", len(seqs), last)
				}
				return seqs
			}
			seqs = append(seqs, ev.Seq)
			if last != 0 && ev.Seq == last {
				return seqs
			}
		case <-timeout:
			t.Fatalf("timed out after %d events waiting for Seq %d", len(seqs), last)
		}
	}
}

// wantSeqs checks that got is first, first+1, ..., first+n-1.
func wantSeqs(t *testing.T, what string, got []uint64, first uint64, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d events; want %d", what, len(got), n)
	}
	for i, seq := range got {
		if seq != first+uint64(i) {
			t.Fatalf("%s[%d].Seq = %d; want %d", what, i, seq, first+uint64(i))
		}
	}
}

// idle reports whether s has no backlog and no pump running.
func (l *eventLog) idle(s <-chan plugin.Event) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for sub := range l.subs {
		if sub.ch == s {
			return !sub.pumping && sub.backlog == nil
		}
	}
	return true
}

func TestEventReplay(t *testing.T) {
	for _, tc := range []struct {
		name      string
		emitted   int
		after     uint64
		wantFirst uint64 // 0: nothing replayed
		wantN     int
	}{
		{"all", 5, 0, 1, 5},
		{"tail", 5, 3, 4, 2},
		{"up to date", 5, 5, 0, 0},
		{"ahead", 5, 9, 0, 0},
		{"ring wrapped", ringSize + 10, 0, 11, ringSize},
		{"ring wrapped, recent", ringSize + 10, ringSize + 5, ringSize + 6, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newEventLog()
			for range tc.emitted {
				l.emit(plugin.Event{Kind: plugin.EventSpawn})
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch, err := l.subscribe(ctx, tc.after)
			if err != nil {
				t.Fatal(err)
			}
			// The replay (which may be longer than the channel's
			// buffer), then live events numbered on.
			live := l.emit(plugin.Event{Kind: plugin.EventExit}).Seq
			got := recvUntil(t, ch, live)
			wantSeqs(t, "replay", got[:len(got)-1], tc.wantFirst, tc.wantN)
			if live != uint64(tc.emitted)+1 {
				t.Errorf("live event Seq %d; want %d", live, tc.emitted+1)
			}
			waitFor(t, "the backlog to be released", func() bool { return l.idle(ch) })
		})
	}
}

func TestSlowSubscriberDropped(t *testing.T) {
	l := newEventLog()
	slow, err := l.subscribe(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := l.subscribe(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	var fastSeen int
	for range subBuffer + 1 {
		l.emit(plugin.Event{}) // never blocks
		fastSeen += len(drain(fast))
	}
	if fastSeen != subBuffer+1 {
		t.Errorf("fast subscriber saw %d events; want %d", fastSeen, subBuffer+1)
	}
	// It receives everything queued for it, then its channel is closed.
	got := recvUntil(t, slow, 0)
	wantSeqs(t, "slow subscriber", got, 1, subBuffer)
	// It resubscribes from the last Seq it saw and misses nothing.
	again, err := l.subscribe(context.Background(), got[len(got)-1])
	if err != nil {
		t.Fatal(err)
	}
	if rest := drain(again); len(rest) != 1 || rest[0] != subBuffer+1 {
		t.Errorf("resubscribed replay %v; want [%d]", rest, subBuffer+1)
	}
}

func TestSubscriptionEnds(t *testing.T) {
	l := newEventLog()
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := l.subscribe(ctx, 0)
	cancel()
	waitFor(t, "the channel to close", func() bool {
		select {
		case _, ok := <-ch:
			return !ok
		default:
			return false
		}
	})
	ch2, _ := l.subscribe(context.Background(), 0)
	l.close()
	if _, ok := <-ch2; ok {
		t.Error("channel open after close")
	}
	if _, err := l.subscribe(context.Background(), 0); err == nil {
		t.Error("subscribe after close succeeded")
	}
}

// Events beyond the channel's buffer wait in a backlog that exists only
// while the reader is behind.
func TestBacklog(t *testing.T) {
	l := newEventLog()
	ch, err := l.subscribe(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		n := 3*chanBuffer + round
		var last uint64
		for range n {
			last = l.emit(plugin.Event{Name: "s"}).Seq
		}
		got := recvUntil(t, ch, last)
		wantSeqs(t, "backlogged events", got, last-uint64(n)+1, n)
		waitFor(t, "the backlog to be released", func() bool { return l.idle(ch) })
	}
}

// A reader that leaves while its backlog is being pumped ends the pump and
// its channel.
func TestBacklogReaderLeaves(t *testing.T) {
	l := newEventLog()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := l.subscribe(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 * chanBuffer {
		l.emit(plugin.Event{})
	}
	cancel()
	waitFor(t, "the pump to stop", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.subs) == 0
	})
	got := recvUntil(t, ch, 0)
	if len(got) > 2*chanBuffer {
		t.Errorf("received %d events; at most %d were emitted", len(got), 2*chanBuffer)
	}
	// A subscriber dropped for being slow, whose reader then leaves
	// without reading, does not leave its pump behind either.
	ctx2, cancel2 := context.WithCancel(context.Background())
	ch2, err := l.subscribe(ctx2, l.lastSeq())
	if err != nil {
		t.Fatal(err)
	}
	var s *subscriber
	l.mu.Lock()
	for sub := range l.subs {
		s = sub
	}
	l.mu.Unlock()
	for range subBuffer + 1 {
		l.emit(plugin.Event{})
	}
	cancel2()
	waitFor(t, "the dropped subscriber's pump to stop", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return !s.pumping && s.done
	})
	recvUntil(t, ch2, 0)
}

// Closing the log delivers what each subscriber has queued, then closes its
// channel.
func TestCloseDeliversBacklog(t *testing.T) {
	l := newEventLog()
	ch, err := l.subscribe(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 2*chanBuffer + 7
	for range n {
		l.emit(plugin.Event{})
	}
	l.close()
	wantSeqs(t, "after close", recvUntil(t, ch, 0), 1, n)
}
