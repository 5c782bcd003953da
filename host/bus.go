package host

import (
	"context"
	"sync"

	"github.com/hbshim/hb/host/api"
)

// busRing is how many recent events the bus keeps: a control API subscriber
// may lag this many behind before it is dropped (its channel closed; hbctl
// then reconnects). The ring is shared by every subscriber, so a subscriber
// costs one goroutine and an unbuffered channel, not a buffer of its own.
const busRing = 4096

// bus fans control API events out to subscribers without ever blocking the
// publisher: publish writes the event into a ring and wakes the
// subscribers, each of which forwards from the ring at its own pace.
type bus struct {
	mu   sync.Mutex
	seq  uint64             // events published; guarded by mu
	ring [busRing]api.Event // event seq n is at ring[(n-1)%busRing]; guarded by mu
	wake chan struct{}      // closed and replaced by each publish; guarded by mu
	subs int                // live subscribers; guarded by mu
}

func newBus() *bus { return &bus{wake: make(chan struct{})} }

func (b *bus) publish(ev api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	b.ring[(b.seq-1)%busRing] = ev
	close(b.wake)
	b.wake = make(chan struct{})
}

// subscribe returns every event published from now on, until ctx ends or
// the subscriber falls more than busRing events behind; then the channel
// is closed.
func (b *bus) subscribe(ctx context.Context) <-chan api.Event {
	ch := make(chan api.Event)
	b.mu.Lock()
	next := b.seq + 1
	b.subs++
	b.mu.Unlock()
	go func() {
		defer func() {
			b.mu.Lock()
			b.subs--
			b.mu.Unlock()
			close(ch)
		}()
		for {
			b.mu.Lock()
			if b.seq-next+1 > busRing && b.seq >= next {
				b.mu.Unlock()
				return // lagged past the ring: dropped
			}
			if next > b.seq {
				wake := b.wake
				b.mu.Unlock()
				select {
				case <-wake:
					continue
				case <-ctx.Done():
					return
				}
			}
			ev := b.ring[(next-1)%busRing]
			b.mu.Unlock()
			select {
			case ch <- ev:
				next++
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// subscribers returns how many subscriptions are live.
func (b *bus) subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs
}
