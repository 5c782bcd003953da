package host

import (
	"strings"
	"testing"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/plugin"
)

const bridgeTOML = "[bridge.runit]\ndir = \"/etc/service\"\nprograms = [\"web\"]\n"

// Bridged programs: handed to the plugin, shown with their manager, their
// events recorded, never respawned by hbd; a reload without the table
// hands the plugin an empty set.
func TestBridgedPrograms(t *testing.T) {
	h := newHarness(t, nil, svcTOML("rx"), bridgeTOML)
	h.connect()
	got := h.f.BridgeSet()
	if len(got) != 1 || got[0] != (plugin.BridgeSpec{Name: "web", Manager: "runit", Dir: "/etc/service/web"}) {
		t.Fatalf("Bridge got %+v", got)
	}
	if st := h.get("web"); st.Manager != "runit" || st.PID != 0 || !strings.HasPrefix(st.Reason, "bridged: runit /etc/service/web") {
		t.Fatalf("status before any event %+v", st)
	}
	if n := len(h.d.List()); n != 2 {
		t.Fatalf("List has %d entries, want rx and web", n)
	}

	h.f.Emit(plugin.Event{Kind: plugin.EventSpawn, Name: "web", Slot: 5, PID: 4242, Generation: 1, Adopted: true, Manager: "runit"})
	h.wait("web", "pid 4242 running", func(st api.ServiceStatus) bool { return st.PID == 4242 && st.State == "running" })
	h.f.Emit(plugin.Event{Kind: plugin.EventExit, Name: "web", Slot: 5, PID: 4242, Generation: 1, Status: 137, Source: "connector", Manager: "runit"})
	st := h.wait("web", "exited", func(st api.ServiceStatus) bool { return st.PID == 0 && st.Exits == 1 })
	if st.LastStatus != 137 || st.State != "exited" {
		t.Fatalf("after the exit %+v", st)
	}
	if c := h.calls("spawn web"); len(c) != 0 {
		t.Fatalf("hbd spawned a bridged program: %q", c)
	}
	h.f.Emit(plugin.Event{Kind: plugin.EventManager, Name: "web", Manager: "runit", Message: "runsv (pid 7) exited"})
	h.wait("web", "manager gone", func(st api.ServiceStatus) bool { return st.Reason == "manager gone: runsv (pid 7) exited" })
	h.f.Emit(plugin.Event{Kind: plugin.EventManager, Name: "web", Manager: "runit"})
	h.wait("web", "manager back", func(st api.ServiceStatus) bool { return strings.HasPrefix(st.Reason, "bridged: runit") })

	h.writeConfig(svcTOML("rx"))
	if _, err := h.d.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := h.f.BridgeSet(); len(got) != 0 {
		t.Fatalf("after a reload without [bridge.runit]: Bridge got %+v", got)
	}
	if _, err := h.d.Get("web"); err == nil {
		t.Fatal("a program no longer bridged is still listed")
	}
}

// Without [bridge.*] and no bridged slot, hbd never calls Bridge.
func TestNoBridgeNoCall(t *testing.T) {
	h := newHarness(t, nil, svcTOML("rx"))
	h.connect()
	if c := h.calls("bridge"); len(c) != 0 {
		t.Fatalf("calls %q", c)
	}
}
