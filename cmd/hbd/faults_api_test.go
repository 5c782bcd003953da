package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/host/api"
)

// TestFaultAPILimits: a control-socket client may not slip a malformed
// signal past the parser, hold more than its share of event streams, or
// make hbctl shm call a stalled writer alive.
func TestFaultAPILimits(t *testing.T) {
	t.Parallel()
	rep := newFaultReport(t, "api-limits")
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.a]
command    = "sleep infinity"
start_secs = "100ms"
`)
	d := h.Start()
	before := h.WaitRunning("a")["a"]

	for _, body := range []string{`{"signal":"9 "}`, `{"signal":" 9"}`, `{"signal":"+9"}`, `{"signal":"09"}`,
		`{"signal":"KILL "}`, `{"signal":"SIG KILL"}`, `{"signal":"9\n"}`, `{"signal":9.0}`} {
		rep.addInputs(1)
		rep.attack(t, "signal body "+body, func() {
			code, resp := rawHTTP(t, h.Socket, "POST", "/v1/services/a/signal", "application/json", strings.NewReader(body), nil)
			if code != 400 {
				t.Errorf("signal %s: %d %s; want 400", body, code, tail(resp, 2))
			}
			if st := h.ServiceStatus("a"); st.PID != before.PID || !Alive(before.PID) {
				t.Errorf("signal %s reached the service: %+v", body, st)
			}
		})
	}

	rep.attack(t, fmt.Sprintf("one uid opens %d event streams", api.MaxEventStreamsPerUID+1), func() {
		rss0 := rssKiB(t, d.PID)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		open := func() int {
			c, err := net.Dial("unix", h.Socket)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			fmt.Fprintf(c, "GET /v1/events HTTP/1.1\r\nHost: hb\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			return resp.StatusCode
		}
		for i := 0; i < api.MaxEventStreamsPerUID; i++ {
			if code := open(); code != 200 {
				t.Fatalf("stream %d: status %d", i+1, code)
			}
		}
		rss1 := rssKiB(t, d.PID)
		rep.note("kib_per_event_stream", (rss1-rss0)/api.MaxEventStreamsPerUID)
		if code := open(); code != 503 {
			t.Errorf("stream %d of one uid: status %d, want 503", api.MaxEventStreamsPerUID+1, code)
		}
		if st := h.ServiceStatus("a"); st.PID != before.PID {
			t.Errorf("service changed while streams were open: %+v", st)
		}
	})

	rep.attack(t, "SIGSTOP the plugin (the table's writer)", func() {
		plugin := int(h.Table().Header().WriterPID)
		if plugin == 0 {
			t.Fatal("no writer pid in the table")
		}
		h.Kill(plugin, syscall.SIGSTOP)
		defer h.Kill(plugin, syscall.SIGCONT)
		writer := func() string {
			out := h.MustCtl("shm", "--name", h.Shm, "--json")
			var v struct{ Writer struct{ Status string } }
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("hbctl shm --json: %v\n%s", err, out)
			}
			return v.Writer.Status
		}
		h.Eventually("hbctl shm to call the stopped writer stalled", func() (bool, string) {
			s := writer()
			return s == "stalled", s
		})
		h.Kill(plugin, syscall.SIGCONT)
		h.Eventually("hbctl shm to call the resumed writer alive", func() (bool, string) {
			s := writer()
			return s == "alive", s
		})
	})
	if st := h.ServiceStatus("a"); st.PID != before.PID {
		t.Errorf("service a: %+v, want the first incarnation %d still running", st, before.PID)
	}
	d.Stop()
}

// rssKiB is a process's resident set size in KiB.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}
