package host

import (
	"context"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
)

// Every subscriber gets every event in order, up to busRing behind.
func TestBusDeliversInOrder(t *testing.T) {
	b := newBus()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subs := []<-chan api.Event{b.subscribe(ctx), b.subscribe(ctx)}
	seq := 0
	for round := 0; round < 3; round++ {
		first := seq
		for i := 0; i < busRing; i++ { // a full ring, no reader running: none is lost
			b.publish(api.Event{Kind: api.EventState, PID: seq})
			seq++
		}
		for k, ch := range subs {
			for i := first; i < seq; i++ {
				ev, ok := <-ch
				if !ok {
					t.Fatalf("subscriber %d: closed at event %d", k, i)
				}
				if ev.Seq != uint64(i+1) || ev.PID != i {
					t.Fatalf("subscriber %d: event %d is seq %d pid %d", k, i, ev.Seq, ev.PID)
				}
			}
		}
	}
}

// A subscriber that falls more than busRing events behind is dropped (its
// channel closed) and the publisher never waits for it.
func TestBusDropsLaggard(t *testing.T) {
	b := newBus()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow := b.subscribe(ctx)
	for i := 0; i < busRing+2; i++ {
		b.publish(api.Event{Kind: api.EventState})
	}
	got := 0
	for range slow {
		got++
	}
	if got > 1 {
		t.Errorf("laggard got %d events before it was dropped, want at most the one it had in hand", got)
	}
	waitSubs(t, b, 0)
}

func TestBusUnsubscribeOnCancel(t *testing.T) {
	b := newBus()
	ctx, cancel := context.WithCancel(context.Background())
	ch := b.subscribe(ctx)
	waitSubs(t, b, 1)
	cancel()
	for range ch {
	}
	waitSubs(t, b, 0)
	b.publish(api.Event{Kind: api.EventState}) // no subscriber: must not block
}

func waitSubs(t *testing.T, b *bus, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for b.subscribers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers, want %d", b.subscribers(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
