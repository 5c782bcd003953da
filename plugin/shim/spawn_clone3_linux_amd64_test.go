//go:build cgo

package shim

import (
	"testing"

	"github.com/hbshim/hb/plugin"
)

// TestCRespawnRuleMatchesGo: the C reap-and-respawn step decides which exit
// statuses to respawn exactly as plugin.Respawn.WantsStatus does.
func TestCRespawnRuleMatchesGo(t *testing.T) {
	pols := []plugin.Respawn{
		{Enabled: true},
		{Enabled: true, OnFailure: true},
		{Enabled: true, OnFailure: true, ExitCodes: []int{0}},
		{Enabled: true, OnFailure: true, ExitCodes: []int{0, 2, 143}},
		{Enabled: true, ExitCodes: []int{0, 1}},
	}
	for _, pol := range pols {
		for status := -1; status <= 300; status++ {
			if c, g := cWantsStatus(pol, status), pol.WantsStatus(status); c != g {
				t.Errorf("policy %+v, status %d: C says %v, Go says %v", pol, status, c, g)
			}
		}
	}
}
