package host

import (
	"fmt"
	"strings"
	"testing"
	"time"

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

// A [bridge.MANAGER] without programs: hbd hands the plugin a spec with
// All and its services' names (a found program must not take them), lists
// the programs the plugin says it found (EventBridge, then Bridged) and
// drops those it says are gone; a skipped name is logged naming both.
func TestBridgedFound(t *testing.T) {
	dir := t.TempDir()
	src := fmt.Sprintf("[bridge.runit]\ndir = %q\n", dir)
	h := newHarness(t, nil, svcTOML("rx"), src)
	h.connect()
	all := plugin.BridgeSpec{Manager: "runit", Dir: dir, All: true}
	if got := h.f.BridgeSet(); len(got) != 1 || got[0] != all {
		t.Fatalf("Bridge got %+v, want %+v", got, all)
	}
	if got := h.f.Reserved(); len(got) != 1 || got[0] != "rx" {
		t.Fatalf("reserved %q, want rx", got)
	}
	if n := len(h.d.List()); n != 1 {
		t.Fatalf("List has %d entries before anything was found", n)
	}

	web := plugin.BridgeSpec{Name: "web", Manager: "runit", Dir: dir + "/web"}
	h.f.Found(web)
	h.f.Emit(plugin.Event{Kind: plugin.EventBridge, Name: "web", Slot: 3, Manager: "runit", Reason: plugin.BridgeAdded, Message: web.Dir})
	h.f.Emit(plugin.Event{Kind: plugin.EventSpawn, Name: "web", Slot: 3, PID: 4242, Generation: 1, Adopted: true, Manager: "runit"})
	waitListed(t, h, "web", true)
	st := h.wait("web", "pid 4242", func(st api.ServiceStatus) bool { return st.PID == 4242 })
	if st.Manager != "runit" || !strings.HasPrefix(st.Reason, "bridged: runit "+dir+"/web") || st.Slot != 3 {
		t.Fatalf("found program %+v", st)
	}
	if l := h.d.List(); len(l) != 2 || l[1].Name != "web" {
		t.Fatalf("List %+v", l)
	}

	h.f.Emit(plugin.Event{Kind: plugin.EventBridge, Name: "rx", Slot: -1, Manager: "runit", Reason: plugin.BridgeSkipped,
		Message: dir + "/rx: the name is one of hbd's services"})
	h.f.Found()
	h.f.Emit(plugin.Event{Kind: plugin.EventBridge, Name: "web", Slot: 3, Manager: "runit", Reason: plugin.BridgeDropped, Message: dir + "/web removed"})
	waitListed(t, h, "web", false)
	if log := h.log.String(); !strings.Contains(log, "[service.rx] (") || !strings.Contains(log, "has the name and wins") {
		t.Errorf("the skipped name is not logged naming both:\n%s", log)
	}
	if st := h.get("rx"); st.Manager != "" {
		t.Fatalf("rx %+v", st)
	}

	// A reload without the table: the plugin gets nothing to bridge.
	h.f.Found(web)
	h.f.Emit(plugin.Event{Kind: plugin.EventBridge, Name: "web", Slot: 3, Manager: "runit", Reason: plugin.BridgeAdded, Message: web.Dir})
	waitListed(t, h, "web", true)
	h.f.Found()
	h.writeConfig(svcTOML("rx"))
	if _, err := h.d.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := h.f.BridgeSet(); len(got) != 0 {
		t.Fatalf("after a reload without [bridge.runit]: Bridge got %+v", got)
	}
	if _, err := h.d.Get("web"); err == nil {
		t.Fatal("a found program is still listed after its table was removed")
	}
}

// waitListed waits until hbd lists name (or, with !want, no longer does).
func waitListed(t *testing.T, h *harness, name string, want bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		if _, err := h.d.Get(name); (err == nil) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: listed should be %v after %v", name, want, bound)
		}
		time.Sleep(time.Millisecond)
	}
}
