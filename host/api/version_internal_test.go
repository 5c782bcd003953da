package api

import (
	"runtime/debug"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	info := func(version string, settings ...string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/hbshim/hb", Version: version}}
			for i := 0; i+1 < len(settings); i += 2 {
				bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
			}
			return bi, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	const rev = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name, version, revision string
		read                    func() (*debug.BuildInfo, bool)
		want                    string
	}{
		{"plain build without vcs", "", "", info("(devel)"), "(devel)"},
		{"no build info", "", "", none, "(devel)"},
		{"plain build with vcs", "", "", info("(devel)", "vcs.revision", rev, "vcs.modified", "false"), "(devel) (rev 0123456789ab)"},
		{"modified tree", "", "", info("(devel)", "vcs.revision", rev, "vcs.modified", "true"), "(devel) (rev 0123456789ab, modified)"},
		{"go install of a tag", "", "", info("v1.2.0", "vcs.revision", rev), "v1.2.0 (rev 0123456789ab)"},
		{"pseudo-version names the revision", "", "", info("v0.0.0-20261206223938-0123456789ab", "vcs.revision", rev), "v0.0.0-20261206223938-0123456789ab"},
		{"make: git describe and rev-parse", "v1.2.0-3-g0123456-dirty", rev, info("(devel)"), "v1.2.0-3-g0123456-dirty"},
		{"make without git", "unknown", "", info("(devel)"), "unknown"},
		{"ldflags version, vcs revision", "v1.3.0", "", info("(devel)", "vcs.revision", rev), "v1.3.0 (rev 0123456789ab)"},
	} {
		if got := buildVersion(tc.version, tc.revision, tc.read); got != tc.want {
			t.Errorf("%s: buildVersion(%q, %q) = %q, want %q", tc.name, tc.version, tc.revision, got, tc.want)
		}
	}
}
