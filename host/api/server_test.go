package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/api/apitest"
)

// testTimeout bounds every wait for a state in these tests; it is never a
// performance threshold.
const testTimeout = 30 * time.Second

func serve(t *testing.T, b api.Backend, group string) (*api.Server, *api.Client) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hbd.sock")
	srv, err := api.Listen(path, group, b, nil)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, api.NewClient(path)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// raw sends one request over the socket and returns the status, the decoded
// error body (for non-2xx) and the raw body.
func raw(t *testing.T, sock, method, path string, body io.Reader) (int, api.Error, []byte, http.Header) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctxT(t), method, "http://hb"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	var e api.Error
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
			t.Errorf("%s %s: status %d with a non-JSON error body %q", method, path, resp.StatusCode, b)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: error Content-Type %q, want application/json", method, path, ct)
		}
	}
	return resp.StatusCode, e, b, resp.Header
}

func TestRoutes(t *testing.T) {
	b := apitest.New("rx", "tx", "dpi")
	srv, _ := serve(t, b, "")
	sock := srv.Path()

	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantCall   string // last backend call after the request ("" = none expected)
		check      func(t *testing.T, body []byte)
	}{
		{name: "list", method: "GET", path: "/v1/services", wantStatus: 200, check: func(t *testing.T, body []byte) {
			var sts []api.ServiceStatus
			mustJSON(t, body, &sts)
			var names []string
			for _, s := range sts {
				names = append(names, s.Name)
			}
			if diff := cmp.Diff([]string{"rx", "tx", "dpi"}, names); diff != "" {
				t.Errorf("names (-want +got):\n%s", diff)
			}
		}},
		{name: "get", method: "GET", path: "/v1/services/rx", wantStatus: 200, check: wantService("rx", "stopped")},
		{name: "get missing", method: "GET", path: "/v1/services/nope", wantStatus: 404},
		{name: "start one", method: "POST", path: "/v1/services/rx/start", wantStatus: 200, wantCall: "start rx", check: wantService("rx", "running")},
		{name: "start one with ignored body", method: "POST", path: "/v1/services/tx/start", body: `{"whatever":1}`, wantStatus: 200, wantCall: "start tx", check: wantService("tx", "running")},
		{name: "restart one", method: "POST", path: "/v1/services/rx/restart", wantStatus: 200, wantCall: "restart rx", check: wantService("rx", "running")},
		{name: "stop one", method: "POST", path: "/v1/services/rx/stop", wantStatus: 200, wantCall: "stop rx", check: wantService("rx", "stopped")},
		{name: "start missing", method: "POST", path: "/v1/services/nope/start", wantStatus: 404, wantCall: "start nope"},
		{name: "signal", method: "POST", path: "/v1/services/tx/signal", body: `{"signal":"HUP"}`, wantStatus: 200, wantCall: "signal HUP tx", check: wantService("tx", "running")},
		{name: "signal number", method: "POST", path: "/v1/services/tx/signal", body: `{"signal":10}`, wantStatus: 200, wantCall: "signal USR1 tx"},
		{name: "signal SIG prefix lower case", method: "POST", path: "/v1/services/tx/signal", body: `{"signal":"sigusr2"}`, wantStatus: 200, wantCall: "signal USR2 tx"},
		{name: "signal stopped is a conflict", method: "POST", path: "/v1/services/rx/signal", body: `{"signal":"TERM"}`, wantStatus: 409, wantCall: "signal TERM rx"},
		{name: "signal unknown name", method: "POST", path: "/v1/services/tx/signal", body: `{"signal":"NOPE"}`, wantStatus: 400},
		{name: "signal missing", method: "POST", path: "/v1/services/tx/signal", body: `{}`, wantStatus: 400},
		{name: "signal no body", method: "POST", path: "/v1/services/tx/signal", wantStatus: 400},
		{name: "start many", method: "POST", path: "/v1/start", body: `{"names":["rx","dpi","rx"]}`, wantStatus: 200, wantCall: "start rx,dpi", check: wantServices("rx", "dpi")},
		{name: "stop all in reverse order", method: "POST", path: "/v1/stop", body: `{"all":true}`, wantStatus: 200, wantCall: "stop dpi,tx,rx", check: wantServices("dpi", "tx", "rx")},
		{name: "restart all", method: "POST", path: "/v1/restart", body: `{"all":true}`, wantStatus: 200, wantCall: "restart rx,tx,dpi", check: wantServices("rx", "tx", "dpi")},
		{name: "start many missing", method: "POST", path: "/v1/start", body: `{"names":["rx","nope"]}`, wantStatus: 404, wantCall: "start rx,nope"},
		{name: "names and all", method: "POST", path: "/v1/start", body: `{"names":["rx"],"all":true}`, wantStatus: 400},
		{name: "nothing selected", method: "POST", path: "/v1/stop", body: `{}`, wantStatus: 400},
		{name: "empty name", method: "POST", path: "/v1/stop", body: `{"names":[""]}`, wantStatus: 400},
		{name: "empty body", method: "POST", path: "/v1/restart", wantStatus: 400},
		{name: "malformed JSON", method: "POST", path: "/v1/start", body: `{"names":["rx"`, wantStatus: 400},
		{name: "wrong type", method: "POST", path: "/v1/start", body: `{"names":"rx"}`, wantStatus: 400},
		{name: "unknown field", method: "POST", path: "/v1/start", body: `{"name":["rx"]}`, wantStatus: 400},
		{name: "trailing data", method: "POST", path: "/v1/start", body: `{"names":["rx"]} {}`, wantStatus: 400},
		{name: "reload", method: "POST", path: "/v1/reload", wantStatus: 200, wantCall: "reload", check: func(t *testing.T, body []byte) {
			if got, want := strings.Join(strings.Fields(string(body)), ""), `{"added":[],"removed":[],"changed":[]}`; got != want {
				t.Errorf("body %s, want %s", got, want)
			}
		}},
		{name: "health", method: "GET", path: "/v1/health", wantStatus: 200, check: func(t *testing.T, body []byte) {
			var h api.Health
			mustJSON(t, body, &h)
			if !h.OK || h.PID != os.Getpid() || h.Version == "" {
				t.Errorf("health %+v: want ok, pid %d, a version", h, os.Getpid())
			}
		}},
		{name: "unknown route", method: "GET", path: "/v1/nope", wantStatus: 404},
		{name: "unknown action", method: "POST", path: "/v1/services/rx/explode", wantStatus: 404},
		{name: "root", method: "GET", path: "/", wantStatus: 404},
		{name: "trailing slash", method: "GET", path: "/v1/services/", wantStatus: 404},
		{name: "wrong method on collection", method: "DELETE", path: "/v1/services", wantStatus: 405},
		{name: "GET on an action", method: "GET", path: "/v1/services/rx/start", wantStatus: 405},
		{name: "GET on reload", method: "GET", path: "/v1/reload", wantStatus: 405},
		{name: "POST on events", method: "POST", path: "/v1/events", wantStatus: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(b.Calls())
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			status, e, got, hdr := raw(t, sock, tc.method, tc.path, body)
			if status != tc.wantStatus {
				t.Fatalf("%s %s: status %d (%s), want %d", tc.method, tc.path, status, got, tc.wantStatus)
			}
			if status == 405 && hdr.Get("Allow") == "" {
				t.Errorf("405 without an Allow header")
			}
			if status >= 300 && e.Error == "" {
				t.Errorf("error body %q has no message", got)
			}
			calls := b.Calls()
			switch {
			case tc.wantCall == "" && len(calls) != before:
				t.Errorf("unexpected backend calls %q", calls[before:])
			case tc.wantCall != "" && (len(calls) == before || calls[len(calls)-1] != tc.wantCall):
				t.Errorf("backend calls %q, want last %q", calls[before:], tc.wantCall)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

func wantService(name, state string) func(*testing.T, []byte) {
	return func(t *testing.T, b []byte) {
		t.Helper()
		var st api.ServiceStatus
		mustJSON(t, b, &st)
		if st.Name != name || st.State != state {
			t.Errorf("got %s %s, want %s %s", st.Name, st.State, name, state)
		}
		if (state == "running") != (st.PID != 0) {
			t.Errorf("%s is %s with pid %d", st.Name, st.State, st.PID)
		}
		if state == "running" && st.Uptime == "" {
			t.Errorf("running %s has no uptime", st.Name)
		}
	}
}

func wantServices(names ...string) func(*testing.T, []byte) {
	return func(t *testing.T, b []byte) {
		t.Helper()
		var sts []api.ServiceStatus
		mustJSON(t, b, &sts)
		var got []string
		for _, s := range sts {
			got = append(got, s.Name)
		}
		if diff := cmp.Diff(names, got); diff != "" {
			t.Errorf("services (-want +got):\n%s", diff)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	b := apitest.New("rx")
	srv, c := serve(t, b, "")
	ctx := ctxT(t)
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantIs     error
		wantMsg    string
		wantDetail []string
	}{
		{"conflict", fmt.Errorf("service %q is stopping: %w", "rx", api.ErrConflict), 409, api.ErrConflict, `start: service "rx" is stopping: not possible now`, nil},
		{"bad request", fmt.Errorf("cannot start a removed service: %w", api.ErrBadRequest), 400, api.ErrBadRequest, "start: cannot start a removed service: bad request", nil},
		{"not found", fmt.Errorf("service %q: %w", "zz", api.ErrNotFound), 404, api.ErrNotFound, `start: service "zz": not found`, nil},
		{"internal", errors.New("plugin: connection lost"), 500, nil, "start: plugin: connection lost", nil},
		{"joined", errors.Join(fmt.Errorf("service %q: %w", "a", api.ErrNotFound), fmt.Errorf("service %q: %w", "b", api.ErrNotFound)), 404, api.ErrNotFound,
			`start: service "a": not found (and 1 more)`, []string{`service "a": not found`, `service "b": not found`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b.Fail("start", tc.err)
			_, err := c.Start(ctx, "rx")
			var ae *api.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("Start: %v (%T), want *api.APIError", err, err)
			}
			if ae.Status != tc.wantStatus || ae.Message != tc.wantMsg {
				t.Errorf("got %d %q, want %d %q", ae.Status, ae.Message, tc.wantStatus, tc.wantMsg)
			}
			if diff := cmp.Diff(tc.wantDetail, ae.Details); diff != "" {
				t.Errorf("details (-want +got):\n%s", diff)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantIs)
			}
			if api.StatusOf(tc.err) != tc.wantStatus {
				t.Errorf("StatusOf = %d, want %d", api.StatusOf(tc.err), tc.wantStatus)
			}
		})
	}

	t.Run("per service", func(t *testing.T) {
		b2 := apitest.New("a", "b")
		_, c2 := serve(t, b2, "")
		b2.Fail("start", errors.Join(&api.ServiceError{Name: "b", Err: api.Errorf(api.ErrConflict, "b did not start: spawn failed: no such program")}))
		_, err := c2.Start(ctx, "a", "b")
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != 409 || len(ae.Services) != 2 {
			t.Fatalf("Start: %v, want a 409 with both services", err)
		}
		if ae.Services[0].Name != "a" || ae.Services[0].Error != "" || ae.Services[1].Name != "b" ||
			ae.Services[1].Error != "b did not start: spawn failed: no such program" {
			t.Errorf("services %+v: want a without error, b with its own", ae.Services)
		}
		if strings.Contains(ae.Message, "conflict") || strings.Contains(ae.Message, "not possible") {
			t.Errorf("message %q has HTTP words", ae.Message)
		}
	})
	t.Run("reload rejected", func(t *testing.T) {
		cfgErr := errors.Join(
			errors.New(`hb.toml:12: service "rx": unknown key "comand"`),
			errors.New(`hb.toml:20: service "tx": restart: "sometimes" is not one of always, on-failure, never`))
		b.SetReload(func() (api.ReloadResult, error) { return api.ReloadResult{}, api.InvalidConfig(cfgErr) })
		_, err := c.Reload(ctx)
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != 422 || !errors.Is(err, api.ErrInvalidConfig) {
			t.Fatalf("Reload: %v, want a 422 *APIError", err)
		}
		want := []string{`hb.toml:12: service "rx": unknown key "comand"`, `hb.toml:20: service "tx": restart: "sometimes" is not one of always, on-failure, never`}
		if diff := cmp.Diff(want, ae.Details); diff != "" {
			t.Errorf("details (-want +got):\n%s", diff)
		}
		if !strings.HasPrefix(ae.Message, "reload: invalid configuration: hb.toml:12") {
			t.Errorf("message %q", ae.Message)
		}
	})
	t.Run("reload ok", func(t *testing.T) {
		want := api.ReloadResult{Added: []string{"new"}, Removed: []string{}, Changed: []string{"rx"}}
		b.SetReload(func() (api.ReloadResult, error) {
			return api.ReloadResult{Added: []string{"new"}, Changed: []string{"rx"}}, nil
		})
		got, err := c.Reload(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	_ = srv
}

func TestBodyTooLarge(t *testing.T) {
	b := apitest.New("rx")
	srv, _ := serve(t, b, "")
	big := `{"names":["` + strings.Repeat("x", api.MaxBodyBytes) + `"]}`
	for _, tc := range []struct {
		name string
		body func() io.Reader
	}{
		{"with length", func() io.Reader { return strings.NewReader(big) }},
		{"chunked", func() io.Reader { return io.MultiReader(strings.NewReader(big)) }},
	} {
		for _, path := range []string{"/v1/start", "/v1/services/rx/start", "/v1/services/rx/signal", "/v1/reload"} {
			t.Run(tc.name+path, func(t *testing.T) {
				status, e, _, _ := raw(t, srv.Path(), "POST", path, tc.body())
				if status != http.StatusRequestEntityTooLarge {
					t.Errorf("status %d (%s), want 413", status, e.Error)
				}
			})
		}
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("backend called despite oversized bodies: %q", calls)
	}
}

func TestEvents(t *testing.T) {
	b := apitest.New("rx", "tx")
	_, c := serve(t, b, "")
	ctx, cancel := context.WithCancel(ctxT(t))
	evs, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "rx"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stop(ctx, "rx"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 2 {
		ev, ok := <-evs
		if !ok {
			t.Fatal("event stream ended early")
		}
		got = append(got, fmt.Sprintf("%d %s %s", ev.Seq, ev.Kind, ev.Name))
		if ev.Time.IsZero() || ev.PID == 0 {
			t.Errorf("event %+v lacks time or pid", ev)
		}
	}
	if diff := cmp.Diff([]string{"1 spawn rx", "2 exit rx"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// The client going away ends the subscription on the server.
	cancel()
	for range evs {
	}
	if err := b.WaitSubscribers(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
}

// TestEventsWire reads the stream as curl would: one JSON object per line,
// each flushed as it happens.
func TestEventsWire(t *testing.T) {
	b := apitest.New("rx")
	srv, _ := serve(t, b, "")
	conn, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	fmt.Fprintf(conn, "GET /v1/events HTTP/1.1\r\nHost: hb\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if err := b.WaitSubscribers(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(resp.Body)
	for i, name := range []string{"one", "two"} {
		b.Emit(api.Event{Kind: api.EventState, Name: name, State: "running"})
		line, err := lines.ReadBytes('\n')
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		var ev api.Event
		mustJSON(t, line, &ev)
		if ev.Name != name || bytes.Count(line, []byte("\n")) != 1 {
			t.Errorf("line %q, want one event for %s", line, name)
		}
	}
}

func TestWait(t *testing.T) {
	b := apitest.New("rx")
	_, c := serve(t, b, "")
	ctx := ctxT(t)

	type result struct {
		st  api.ServiceStatus
		err error
	}
	wait := func(up bool) chan result {
		ch := make(chan result, 1)
		go func() {
			st, err := c.Wait(ctx, "rx", up)
			ch <- result{st, err}
		}()
		if err := b.WaitSubscribers(ctx, 1); err != nil {
			t.Fatal(err)
		}
		return ch
	}

	up := wait(true)
	// Unrelated events and an intermediate state do not end the wait.
	b.Emit(api.Event{Kind: api.EventSpawn, Name: "other", PID: 1})
	b.Update("rx", func(s *api.ServiceStatus) { s.State, s.PID = "starting", 77 })
	b.Update("rx", func(s *api.ServiceStatus) { s.State = "running" })
	r := <-up
	if r.err != nil || !api.IsUp(r.st) || r.st.PID != 77 {
		t.Fatalf("Wait up: %+v, %v", r.st, r.err)
	}
	if err := b.WaitSubscribers(ctx, 0); err != nil {
		t.Fatal(err)
	}

	// Already in the state: returns at once.
	if st, err := c.Wait(ctx, "rx", true); err != nil || st.PID != 77 {
		t.Fatalf("Wait up when up: %+v, %v", st, err)
	}

	down := wait(false)
	b.Update("rx", func(s *api.ServiceStatus) { s.State, s.PID = "backoff", 0 })
	if r := <-down; r.err != nil || r.st.State != "backoff" {
		t.Fatalf("Wait down: %+v, %v", r.st, r.err)
	}

	if _, err := c.Wait(ctx, "nope", true); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Wait for a missing service: %v, want ErrNotFound", err)
	}

	short, cancel := context.WithCancel(ctx)
	go func() {
		if b.WaitSubscribers(ctx, 1) == nil {
			cancel()
		}
	}()
	if _, err := c.Wait(short, "rx", true); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait cancelled: %v, want context.Canceled", err)
	}
}

func TestHealth(t *testing.T) {
	b := apitest.New()
	_, c := serve(t, b, "")
	ctx := ctxT(t)
	info := api.PluginInfo{PID: 42, Shm: "hb", Slots: 1024, Connector: true, Pidfd: true}
	b.SetPluginInfo(info, nil)
	h, err := c.Health(ctx)
	if err != nil || !h.OK || h.Plugin == nil || !reflect.DeepEqual(*h.Plugin, info) {
		t.Fatalf("Health: %+v, %v", h, err)
	}
	bad := info
	bad.ShmProblem = "/dev/shm/hb names another file now"
	b.SetPluginInfo(bad, nil)
	if h, err := c.Health(ctx); err != nil || h.OK || !strings.Contains(h.Error, "names another file") {
		t.Errorf("Health with a table problem: %+v, %v; want not ok, naming it", h, err)
	}
	b.SetPluginInfo(info, nil)
	b2 := apitest.New("rx", "db")
	b2.SetPluginInfo(info, nil)
	b2.Update("db", func(st *api.ServiceStatus) { st.State = "fatal" })
	_, c2 := serve(t, b2, "")
	if h, err := c2.Health(ctx); err != nil || h.OK || !slices.Equal(h.Fatal, []string{"db"}) || !strings.Contains(h.Error, "db") {
		t.Errorf("Health with a fatal service: %+v, %v; want not ok, naming db", h, err)
	}
	b.SetPluginInfo(info, errors.New("plugin exited"))
	h, err = c.Health(ctx)
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != 503 || h.OK || !strings.Contains(h.Error, "plugin exited") || h.PID != os.Getpid() || h.Attaching {
		t.Fatalf("unhealthy Health: %+v, %v", h, err)
	}
	b.SetPluginInfo(api.PluginInfo{}, fmt.Errorf("hbd: %w", api.ErrAttaching))
	if h, err = c.Health(ctx); !errors.As(err, &ae) || ae.Status != 503 || h.OK || !h.Attaching {
		t.Errorf("Health while attaching: %+v, %v; want 503, attaching", h, err)
	}
}

func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	missing := filepath.Join(dir, "missing.sock")
	_, err := api.NewClient(missing).List(ctx)
	if !errors.Is(err, api.ErrUnreachable) || !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing socket: %v, want ErrUnreachable naming %s", err, missing)
	}
	stale := filepath.Join(dir, "stale.sock")
	makeStale(t, stale)
	_, err = api.NewClient(stale).List(ctx)
	if !errors.Is(err, api.ErrUnreachable) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("stale socket: %v, want ErrUnreachable, ECONNREFUSED", err)
	}
	if _, err := api.NewClient(stale).Events(ctx); !errors.Is(err, api.ErrUnreachable) {
		t.Errorf("Events on a stale socket: %v, want ErrUnreachable", err)
	}
}

// makeStale leaves a socket file nobody listens on.
func makeStale(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestListenSocketFile(t *testing.T) {
	b := apitest.New("rx")
	ctx := ctxT(t)

	t.Run("creates the directory and the socket 0660", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "run", "hb", "hbd.sock")
		srv, err := api.Listen(path, "", b, nil)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
			t.Errorf("socket mode %v, want socket 0660", fi.Mode())
		}
		di, _ := os.Stat(filepath.Dir(path))
		if di.Mode().Perm() != 0o755 {
			t.Errorf("directory mode %v, want 0755", di.Mode().Perm())
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket still there after Close: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("group", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("chown to another group needs root")
		}
		path := filepath.Join(t.TempDir(), "hbd.sock")
		srv, err := api.Listen(path, "4242", b, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Gid != 4242 || st.Mode&0o777 != 0o660 {
			t.Errorf("socket gid %d mode %o, want 4242 660", st.Gid, st.Mode&0o777)
		}
	})

	t.Run("unknown group", func(t *testing.T) {
		_, err := api.Listen(filepath.Join(t.TempDir(), "hbd.sock"), "no-such-group-hb", b, nil)
		if err == nil || !strings.Contains(err.Error(), `"no-such-group-hb"`) {
			t.Errorf("Listen: %v, want an error naming the group", err)
		}
	})

	t.Run("stale socket is reused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hbd.sock")
		makeStale(t, path)
		srv, err := api.Listen(path, "", b, nil)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		defer srv.Close()
		if _, err := api.NewClient(path).List(ctx); err != nil {
			t.Errorf("List: %v", err)
		}
	})

	t.Run("live hbd is refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hbd.sock")
		srv, err := api.Listen(path, "", b, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		_, err = api.Listen(path, "", b, nil)
		want := fmt.Sprintf("another hbd (pid %d) is listening on %s", os.Getpid(), path)
		if !errors.Is(err, api.ErrSocketInUse) || !strings.Contains(err.Error(), want) {
			t.Fatalf("second Listen: %v, want %q", err, want)
		}
		// The first server is untouched.
		if _, err := api.NewClient(path).List(ctx); err != nil {
			t.Errorf("first server after refused Listen: %v", err)
		}
	})

	t.Run("live other server is refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hbd.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		_, err = api.Listen(path, "", b, nil)
		if !errors.Is(err, api.ErrSocketInUse) || !strings.Contains(err.Error(), "another process is listening on "+path) {
			t.Fatalf("Listen: %v", err)
		}
	})

	t.Run("symlink is refused", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "target")
		if err := os.WriteFile(target, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "hbd.sock")
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		_, err := api.Listen(path, "", b, nil)
		if err == nil || !strings.Contains(err.Error(), "is a symlink") {
			t.Fatalf("Listen: %v, want a symlink refusal", err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("symlink was touched: %v %v", fi, err)
		}
		if b, _ := os.ReadFile(target); string(b) != "keep" {
			t.Errorf("target changed: %q", b)
		}
	})

	t.Run("symlinked directory is refused", func(t *testing.T) {
		dir := t.TempDir()
		real := filepath.Join(dir, "real")
		if err := os.Mkdir(real, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		_, err := api.Listen(filepath.Join(link, "hbd.sock"), "", b, nil)
		if err == nil || !strings.Contains(err.Error(), "is a symlink") {
			t.Fatalf("Listen: %v, want a symlink refusal", err)
		}
	})

	t.Run("regular file is refused and kept", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hbd.sock")
		if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := api.Listen(path, "", b, nil)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Listen: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Errorf("file changed: %q", b)
		}
	})

	t.Run("path too long", func(t *testing.T) {
		_, err := api.Listen("/tmp/"+strings.Repeat("x", 120), "", b, nil)
		if err == nil || !strings.Contains(err.Error(), "limit is 107") {
			t.Fatalf("Listen: %v", err)
		}
	})

	t.Run("Close leaves a replaced socket alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "hbd.sock")
		srv, err := api.Listen(path, "", b, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		makeStale(t, path)
		srv.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("Close removed a socket it did not make: %v", err)
		}
	})
}

func TestCloseEndsEventStreams(t *testing.T) {
	b := apitest.New("rx")
	srv, c := serve(t, b, "")
	evs, err := c.Events(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	for range evs {
	}
	if _, err := c.Wait(ctxT(t), "rx", true); !errors.Is(err, api.ErrUnreachable) {
		t.Errorf("Wait after Close: %v, want ErrUnreachable", err)
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in      string
		want    syscall.Signal
		wantErr bool
	}{
		{"HUP", syscall.SIGHUP, false},
		{"hup", syscall.SIGHUP, false},
		{"SIGTERM", syscall.SIGTERM, false},
		{"sigkill", syscall.SIGKILL, false},
		{" sigkill ", 0, true},
		{"9 ", 0, true},
		{"+9", 0, true},
		{"10", syscall.SIGUSR1, false},
		{"0", 0, true},
		{"65", 0, true},
		{"", 0, true},
		{"NOPE", 0, true},
	}
	for _, tc := range tests {
		got, err := api.ParseSignal(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("ParseSignal(%q) error %v does not wrap ErrBadRequest", tc.in, err)
		}
	}
	if got := api.SignalName(syscall.SIGUSR2); got != "USR2" {
		t.Errorf("SignalName(SIGUSR2) = %q", got)
	}
}

func TestInvalidConfig(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		wantMsg     string
		wantDetails []string
	}{
		{"joined", errors.Join(errors.New("a.toml:1: x"), errors.New("a.toml:2: y")), "invalid configuration: a.toml:1: x (and 1 more)", []string{"a.toml:1: x", "a.toml:2: y"}},
		{"lines", errors.New("a.toml:1: x\n\na.toml:3: z\n"), "invalid configuration: a.toml:1: x (and 1 more)", []string{"a.toml:1: x", "a.toml:3: z"}},
		{"one", errors.New("a.toml:1: x"), "invalid configuration: a.toml:1: x", []string{"a.toml:1: x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := api.InvalidConfig(tc.err)
			if err.Error() != tc.wantMsg {
				t.Errorf("message %q, want %q", err.Error(), tc.wantMsg)
			}
			var d api.Detailer
			if !errors.As(err, &d) {
				t.Fatal("not a Detailer")
			}
			if diff := cmp.Diff(tc.wantDetails, d.Details()); diff != "" {
				t.Errorf("details (-want +got):\n%s", diff)
			}
			if !errors.Is(err, api.ErrInvalidConfig) || !errors.Is(err, tc.err) || api.StatusOf(err) != 422 {
				t.Errorf("%v does not match ErrInvalidConfig and its cause, or is not 422", err)
			}
		})
	}
	if api.InvalidConfig(nil) != nil {
		t.Error("InvalidConfig(nil) != nil")
	}
}

// TestEventStreamLimit: one peer uid may hold MaxEventStreamsPerUID event
// streams; the next is answered 503 and saying why, and closing one lets a
// new one in.
func TestEventStreamLimit(t *testing.T) {
	b := apitest.New("rx")
	_, c := serve(t, b, "")
	cancels := make([]context.CancelFunc, 0, api.MaxEventStreamsPerUID)
	for i := 0; i < api.MaxEventStreamsPerUID; i++ {
		ctx, cancel := context.WithCancel(ctxT(t))
		cancels = append(cancels, cancel)
		if _, err := c.Events(ctx); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
	}()
	_, err := c.Events(ctxT(t))
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != 503 || !strings.Contains(err.Error(), "too many event streams") {
		t.Fatalf("stream %d: %v, want a 503 naming the limit", api.MaxEventStreamsPerUID+1, err)
	}
	cancels[0]()
	if err := b.WaitSubscribers(ctxT(t), api.MaxEventStreamsPerUID-1); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	for {
		_, err := c.Events(ctx)
		if err == nil {
			break
		}
		if !errors.As(err, &ae) || ae.Status != 503 || ctx.Err() != nil {
			t.Fatalf("after closing one stream: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Events published before the server closes reach a subscriber: hbd's last
// exits at shutdown are not lost to `hbctl watch`.
func TestEventsDeliveredBeforeClose(t *testing.T) {
	b := apitest.New("rx")
	srv, c := serve(t, b, "")
	ctx := ctxT(t)
	evs, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WaitSubscribers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		b.Emit(api.Event{Kind: api.EventExit, Name: "rx", PID: i + 1})
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	got := 0
	for ev := range evs {
		if ev.Kind == api.EventExit && ev.PID == got+1 {
			got++
		}
	}
	if got != n {
		t.Errorf("the subscriber received %d of the %d events published before Close", got, n)
	}
}

// metricsBackend is a Backend that writes metrics (or fails to).
type metricsBackend struct {
	*apitest.Backend
	err error
}

func (m metricsBackend) WriteMetrics(_ context.Context, w io.Writer) error {
	if m.err != nil {
		return m.err
	}
	_, err := io.WriteString(w, "# TYPE hb_x gauge\nhb_x 1\n")
	return err
}

func TestMetricsRoute(t *testing.T) {
	plain := apitest.New("rx")
	srv, _ := serve(t, plain, "")
	if code, e, _, _ := raw(t, srv.Path(), "GET", "/metrics", nil); code != 404 || !strings.Contains(e.Error, "no metrics") {
		t.Errorf("GET /metrics from a backend without metrics: %d %q, want 404", code, e.Error)
	}
	srv, _ = serve(t, metricsBackend{Backend: apitest.New("rx")}, "")
	code, _, body, hdr := raw(t, srv.Path(), "GET", "/metrics", nil)
	if code != 200 || string(body) != "# TYPE hb_x gauge\nhb_x 1\n" || hdr.Get("Content-Type") != api.MetricsContentType {
		t.Errorf("GET /metrics: %d %q, Content-Type %q", code, body, hdr.Get("Content-Type"))
	}
	if code, _, body, _ := raw(t, srv.Path(), "HEAD", "/metrics", nil); code != 200 || len(body) != 0 {
		t.Errorf("HEAD /metrics: %d, %d bytes", code, len(body))
	}
	if code, _, _, hdr := raw(t, srv.Path(), "POST", "/metrics", nil); code != 405 || hdr.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /metrics: %d, Allow %q", code, hdr.Get("Allow"))
	}
	srv, _ = serve(t, metricsBackend{Backend: apitest.New("rx"), err: errors.New("boom")}, "")
	if code, e, _, _ := raw(t, srv.Path(), "GET", "/metrics", nil); code != 500 || !strings.Contains(e.Error, "boom") {
		t.Errorf("GET /metrics failing: %d %q, want 500 naming the error", code, e.Error)
	}
}
