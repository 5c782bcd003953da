package shim

import (
	"slices"
	"testing"

	"github.com/hbshim/hb/connector"
	"github.com/hbshim/hb/host/config"
)

// hbd passes [hbd] detector to the plugin's --detector as it is, and the
// manager does not import the detectors: the two lists of names must agree.
func TestDetectorNamesAgree(t *testing.T) {
	var names []string
	for _, d := range connector.Detectors {
		names = append(names, d.String())
	}
	if !slices.Equal(names, config.Detectors) {
		t.Errorf("config.Detectors = %q, connector's detectors are %q", config.Detectors, names)
	}
	for _, n := range config.Detectors {
		if d, err := connector.ParseDetector(n); err != nil || d.String() != n {
			t.Errorf("ParseDetector(%q) = %v, %v", n, d, err)
		}
	}
}
