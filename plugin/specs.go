package plugin

import (
	"slices"
	"sync"
)

// specStore lets the Specs the plugin keeps share their memory. The
// implementation keeps each service's last Spec for as long as the service
// exists (to respawn it), and every Spec carries a complete environment:
// hbd's, usually the same for every service. Decoded from the wire, each
// Spec would hold its own copy of every variable, a few KiB per service. So
// an environment equal to the last one received is replaced by that one (one
// slice for all of them), and a different one reuses the strings it has in
// common with it. The store keeps one environment, so it stays small
// whatever the number of services or reloads.
type specStore struct {
	mu     sync.Mutex
	env    []string // the last environment received; guarded by mu
	logDir string   // the last LogDir received; guarded by mu
}

// share points sp's Env and LogDir at the store's copies where they are
// equal, and makes them the store's otherwise.
func (st *specStore) share(sp *Spec) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if sp.LogDir == st.logDir {
		sp.LogDir = st.logDir
	} else {
		st.logDir = sp.LogDir
	}
	if slices.Equal(sp.Env, st.env) {
		sp.Env = st.env
		return
	}
	known := make(map[string]string, len(st.env))
	for _, kv := range st.env {
		known[kv] = kv
	}
	// Exactly sized: a decoded slice may have spare capacity.
	env := make([]string, len(sp.Env))
	for i, kv := range sp.Env {
		if s, ok := known[kv]; ok {
			kv = s
		}
		env[i] = kv
	}
	sp.Env, st.env = env, env
}
