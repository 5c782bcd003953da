package ctl

import (
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hbshim/hb/host/api"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args    []string
		wantPos []string
		wantO   opts
		wantErr bool
	}{
		{args: nil, wantPos: nil},
		{args: []string{"rx", "--json"}, wantPos: []string{"rx"}, wantO: opts{json: true}},
		{args: []string{"--json", "rx", "tx"}, wantPos: []string{"rx", "tx"}, wantO: opts{json: true}},
		{args: []string{"rx", "-s", "/x.sock", "tx"}, wantPos: []string{"rx", "tx"}, wantO: opts{socket: "/x.sock"}},
		{args: []string{"rx", "--timeout=2s", "--up"}, wantPos: []string{"rx"}, wantO: opts{timeout: 2 * time.Second, up: true}},
		{args: []string{"rx", "--timeout", "2s"}, wantPos: []string{"rx"}, wantO: opts{timeout: 2 * time.Second}},
		{args: []string{"-9", "rx"}, wantPos: []string{"-9", "rx"}},
		{args: []string{"rx", "--", "--json"}, wantPos: []string{"rx", "--json"}},
		{args: []string{"--json", "--", "-x"}, wantPos: []string{"-x"}, wantO: opts{json: true}},
		{args: []string{"-", "rx"}, wantPos: []string{"-", "rx"}},
		{args: []string{"rx", "--bogus"}, wantErr: true},
		{args: []string{"rx", "--timeout"}, wantErr: true},
	}
	for _, tc := range tests {
		var o opts
		fs := newFlagSet("test", &o)
		jsonFlag(fs, &o)
		waitFlags(fs, &o)
		pos, err := parseArgs(fs, tc.args)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseArgs(%q): error %v, want error %v", tc.args, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if diff := cmp.Diff(tc.wantPos, pos); diff != "" {
			t.Errorf("parseArgs(%q) positional (-want +got):\n%s", tc.args, diff)
		}
		if o != tc.wantO {
			t.Errorf("parseArgs(%q) options %+v, want %+v", tc.args, o, tc.wantO)
		}
	}
	var o opts
	if _, err := parseArgs(newFlagSet("test", &o), []string{"-h"}); err != flag.ErrHelp {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestFormat(t *testing.T) {
	now := time.Date(2025, 11, 25, 19, 0, 0, 0, time.Local)
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"no exit yet", lastStatus(0, -1), "-"},
		{"unknown status", lastStatus(2, -1), "?"},
		{"exit code", lastStatus(1, 3), "3"},
		{"signal", lastStatus(1, 137), "137(KILL)"},
		{"running uptime from backend", uptimeOrSince(api.ServiceStatus{State: "running", Uptime: "1h0m0s"}, now), "1h0m0s"},
		{"running uptime from since", uptimeOrSince(api.ServiceStatus{State: "running", Since: now.Add(-90 * time.Second)}, now), "1m30s"},
		{"stopped today", uptimeOrSince(api.ServiceStatus{State: "stopped", Since: now.Add(-time.Hour)}, now), "since 18:00:00"},
		{"stopped long ago", uptimeOrSince(api.ServiceStatus{State: "fatal", Since: now.Add(-48 * time.Hour)}, now), "since 2025-11-23 19:00"},
		{"never", uptimeOrSince(api.ServiceStatus{State: "stopped"}, now), "-"},
		{"backoff reason", reason(api.ServiceStatus{Reason: "exited too quickly", NextStart: now.Add(1500 * time.Millisecond)}, now), "exited too quickly; next start in 1.5s"},
		{"adopted", reason(api.ServiceStatus{Adopted: true}, now), "adopted"},
		{"status text", reason(api.ServiceStatus{StatusText: "Ready to accept connections"}, now), "status: Ready to accept connections"},
		{"exit event", eventLine(api.Event{Time: now, Kind: "exit", Name: "rx", PID: 7, Generation: 2, Status: 139, Source: "connector", State: "backoff"}),
			"19:00:00.000000 exit   rx pid 7 gen 2 status 139(SEGV) via connector -> backoff"},
		{"state event", eventLine(api.Event{Time: now, Kind: "state", Name: "rx", State: "fatal", Reason: "too many restarts"}),
			"19:00:00.000000 state  rx -> fatal: too many restarts"},
		{"reload event", eventLine(api.Event{Time: now, Kind: "reload", Reason: "added 1"}), "19:00:00.000000 reload: added 1"},
		{"hung event", eventLine(api.Event{Time: now, Kind: "hung", Name: "rx", PID: 7, Generation: 2, State: "hung", Reason: "no beat for 21ms (watchdog 20ms)"}),
			"19:00:00.000000 hung   rx pid 7 gen 2 -> hung: no beat for 21ms (watchdog 20ms)"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// TestRunInProcess covers Run's own paths without a server.
func TestRunInProcess(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"help", "wait"}, ExitOK, "usage: hbctl [-s SOCKET] wait NAME... --up|--down", ""},
		{[]string{}, ExitUsage, "", "usage: hbctl"},
		{[]string{"frobnicate"}, ExitUsage, "", `unknown command "frobnicate"`},
		{[]string{"-s"}, ExitUsage, "", "flag needs an argument"},
		{[]string{"status", "-s", "/nonexistent/hbd.sock"}, ExitUnknown, "", "cannot reach hbd at /nonexistent/hbd.sock"},
		{[]string{"--version"}, ExitOK, "hbctl " + api.BuildVersion() + "\n", ""},
		{[]string{"-s", "/nonexistent/hbd.sock", "--version", "status"}, ExitOK, "hbctl ", ""},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		code := Run(context.Background(), tc.args, Env{Stdout: &out, Stderr: &errb})
		if code != tc.code || !strings.Contains(out.String(), tc.inStdout) || !strings.Contains(errb.String(), tc.inStderr) {
			t.Errorf("Run(%q) = %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out.String(), errb.String(), tc.code, tc.inStdout, tc.inStderr)
		}
	}
}

// TestManualDocumentsEveryCommand: docs/hbctl.md, which is also the man
// page hbctl(8), has a section for every command and names every flag.
func TestManualDocumentsEveryCommand(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/hbctl.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range visible() {
		head := "### " + c.name
		if c.synopsis != "" {
			head += " " + c.synopsis
		}
		if !strings.Contains(string(doc), head+"\n") {
			t.Errorf("docs/hbctl.md has no heading %q", head)
		}
		for _, f := range flagNames(c) {
			if !strings.Contains(string(doc), f) {
				t.Errorf("docs/hbctl.md does not name %s's flag %s", c.name, f)
			}
		}
		if !strings.Contains(Usage, "  "+c.name+" ") && !strings.Contains(Usage, "  "+c.name+"\n") {
			t.Errorf("hbctl's usage does not list %s", c.name)
		}
	}
}
