package host

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundary keeps the boundary between the manager and the plugin
// visible in the import graph: nothing under host/ may depend on the
// plugin's implementation (plugin/shim), the kernel detectors (connector) or
// netlink, and the table's package (shm, which peers import) on nothing but
// the standard library and golang.org/x/sys; and hbd and hbctl link no
// Prometheus library.
func TestImportBoundary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	deps := func(pkgs ...string) []string {
		out, err := exec.Command(goTool, append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, pkgs...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %v: %v\n%s", pkgs, err, out)
		}
		return strings.Fields(string(out))
	}
	const mod = "github.com/hbshim/hb/"
	for _, d := range deps(mod + "host/...") {
		for _, banned := range []string{mod + "plugin/shim", mod + "connector", "github.com/mdlayher/netlink"} {
			if d == banned || strings.HasPrefix(d, banned+"/") {
				t.Errorf("host/... depends on %s: the manager must reach the plugin only through package plugin", d)
			}
		}
	}
	for _, d := range deps(mod+"cmd/hbd", mod+"cmd/hbctl") {
		if strings.HasPrefix(d, "github.com/prometheus/") {
			t.Errorf("hbd or hbctl depends on %s: the Prometheus text parser is for the tests only (host/metrics writes the format itself)", d)
		}
	}
	for _, d := range deps(mod + "shm") {
		if d != mod+"shm" && !strings.HasPrefix(d, "golang.org/x/sys/") {
			t.Errorf("shm depends on %s: peers import it, so it may use only the standard library and golang.org/x/sys", d)
		}
	}
}
