package plugin

import (
	"testing"
	"time"
)

// TestBurstTrimArmsOnlyForABurst: fewer notes than a burst arm nothing; a
// burst arms one release, which resets the count.
func TestBurstTrimArmsOnlyForABurst(t *testing.T) {
	b := &BurstTrim{Burst: 3, Quiet: time.Millisecond}
	b.Note()
	b.Note()
	b.mu.Lock()
	armed := b.t != nil
	b.mu.Unlock()
	if armed {
		t.Fatal("two notes of a burst of three armed the release")
	}
	b.Note()
	b.mu.Lock()
	armed = b.t != nil
	b.mu.Unlock()
	if !armed {
		t.Fatal("a burst did not arm the release")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		done := b.t == nil && b.n == 0
		b.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the release did not run")
		}
		time.Sleep(time.Millisecond)
	}
}
