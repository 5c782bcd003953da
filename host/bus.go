package host

import (
	"context"
	"sync"

	"github.com/hbshim/hb/host/api"
)

// subBuffer is how many events a control API subscriber may lag behind
// before it is dropped (its channel closed); hbctl then reconnects.
const subBuffer = 1024

// bus fans control API events out to subscribers without ever blocking the
// publisher.
type bus struct {
	mu   sync.Mutex
	seq  uint64                  // guarded by mu
	subs map[chan api.Event]bool // guarded by mu
}

func newBus() *bus { return &bus{subs: map[chan api.Event]bool{}} }

func (b *bus) publish(ev api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *bus) subscribe(ctx context.Context) <-chan api.Event {
	ch := make(chan api.Event, subBuffer)
	b.mu.Lock()
	b.subs[ch] = true
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.subs[ch] {
			delete(b.subs, ch)
			close(ch)
		}
	}()
	return ch
}
