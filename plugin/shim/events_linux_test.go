package shim

import (
	"context"
	"testing"

	"github.com/hbshim/hb/plugin"
)

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
			got := drain(ch)
			if len(got) != tc.wantN {
				t.Fatalf("replayed %d events; want %d", len(got), tc.wantN)
			}
			for i, seq := range got {
				if seq != tc.wantFirst+uint64(i) {
					t.Fatalf("replay[%d].Seq = %d; want %d", i, seq, tc.wantFirst+uint64(i))
				}
			}
			// Live events follow, numbered on.
			l.emit(plugin.Event{Kind: plugin.EventExit})
			if live := drain(ch); len(live) != 1 || live[0] != uint64(tc.emitted)+1 {
				t.Errorf("live events %v; want [%d]", live, tc.emitted+1)
			}
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
	got := drain(slow)
	if len(got) != subBuffer {
		t.Errorf("slow subscriber got %d events before being dropped; want %d", len(got), subBuffer)
	}
	if _, ok := <-slow; ok {
		t.Error("slow subscriber's channel still open")
	}
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
