package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/plugintest"
)

// batchRecorder is a ManySpawner that records its batches and fails the
// ones it is told to.
type batchRecorder struct {
	mu      sync.Mutex
	batches [][]string
	fail    map[string]error // a batch holding this name fails whole
	perSpec map[string]error // this spec's own outcome
}

func (b *batchRecorder) SpawnMany(_ context.Context, specs []plugin.Spec) ([]plugin.SpawnOutcome, error) {
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	b.mu.Lock()
	b.batches = append(b.batches, names)
	b.mu.Unlock()
	for _, n := range names {
		if err := b.fail[n]; err != nil {
			return nil, err
		}
	}
	outs := make([]plugin.SpawnOutcome, len(specs))
	for i, s := range specs {
		outs[i].Result = plugin.SpawnResult{Slot: i, PID: 1000 + i}
		outs[i].Err = b.perSpec[s.Name]
	}
	return outs, nil
}

// TestSpawnBatches: the specs wanted go in batches of spawnBatch in their
// order, each outcome reaches its spec, and a batch whose call failed fails
// each of its specs with that error.
func TestSpawnBatches(t *testing.T) {
	n := 2*spawnBatch + 22
	specs := make([]plugin.Spec, n)
	for i := range specs {
		specs[i].Name = fmt.Sprintf("s%03d", i)
	}
	skip := map[int]bool{5: true}
	callErr := errors.New("plugin went away")
	perSpec := errors.New("bad spec")
	b := &batchRecorder{
		fail:    map[string]error{specs[2*spawnBatch+1].Name: callErr}, // in the third batch
		perSpec: map[string]error{specs[7].Name: perSpec},
	}
	got := make([]error, n)
	set := make([]bool, n)
	var mu sync.Mutex
	spawnBatches(b, specs, func(i int, _ plugin.SpawnResult, err error) {
		mu.Lock()
		defer mu.Unlock()
		if set[i] {
			t.Errorf("spec %d set twice", i)
		}
		set[i], got[i] = true, err
	}, func(i int) bool { return !skip[i] })

	var sizes []int
	var all []string
	slices.SortFunc(b.batches, func(x, y []string) int { return slices.Compare(x, y) })
	for _, batch := range b.batches {
		sizes = append(sizes, len(batch))
		all = append(all, batch...)
	}
	if !slices.Equal(sizes, []int{spawnBatch, spawnBatch, 21}) {
		t.Errorf("batch sizes %v, want [%d %d 21]", sizes, spawnBatch, spawnBatch)
	}
	if slices.Contains(all, specs[5].Name) || len(all) != n-1 || !slices.IsSorted(all) {
		t.Errorf("batches %v: want every spec but s005 once, in order", b.batches)
	}
	for i := range specs {
		switch {
		case skip[i]:
			if set[i] {
				t.Errorf("spec %d not wanted but set", i)
			}
		case i == 7:
			if !errors.Is(got[i], perSpec) {
				t.Errorf("spec 7: %v, want its own error", got[i])
			}
		case i > 2*spawnBatch: // s005 left out: the third batch begins one later
			if !errors.Is(got[i], callErr) {
				t.Errorf("spec %d of the failed batch: %v, want the call's error", i, got[i])
			}
		default:
			if !set[i] || got[i] != nil {
				t.Errorf("spec %d: set %v err %v", i, set[i], got[i])
			}
		}
	}
}

// TestStartUsesSpawnMany: a plugin of FeatureSpawnMany starts the
// services of an autostart in one SpawnMany call; an older one gets a
// Spawn per service. Either way every service starts.
func TestStartUsesSpawnMany(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		features int
		many     bool
	}{{plugin.FeatureSpawnMany, true}, {plugin.FeatureLogPipes, false}} {
		t.Run(fmt.Sprintf("feature %d", tt.features), func(t *testing.T) {
			t.Parallel()
			var svcs []string
			for i := range testSlots - 1 {
				svcs = append(svcs, svcTOML(fmt.Sprintf("s%d", i), `start_secs = "0s"`))
			}
			h := newHarness(t, func(f *plugintest.Shim) { f.SetFeatureVersion(tt.features) }, svcs...)
			h.connect()
			for i := range testSlots - 1 {
				h.waitState(fmt.Sprintf("s%d", i), "running")
			}
			many := h.calls("spawn-many")
			spawns := h.calls("spawn ")
			if tt.many && !slices.Equal(many, []string{fmt.Sprintf("spawn-many %d", testSlots-1)}) {
				t.Errorf("SpawnMany calls %q, want one of %d", many, testSlots-1)
			}
			if !tt.many && len(many) != 0 {
				t.Errorf("SpawnMany called on a plugin of feature version %d: %q", tt.features, many)
			}
			if len(spawns) != testSlots-1 {
				t.Errorf("spawns %q, want %d", spawns, testSlots-1)
			}
		})
	}
}
