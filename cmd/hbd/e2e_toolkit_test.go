package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hbshim/hb/host/api"
	"github.com/hbshim/hb/host/metrics/metricstest"
	"github.com/hbshim/hb/shm"
)

// scrape GETs url with client and returns the body, after checking the
// status and the exact Content-Type of the text format 0.0.4.
func scrape(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("GET %s: Content-Type %q", url, ct)
	}
	return string(b)
}

// unixClient is an HTTP client that reaches sock whatever the URL's host.
func unixClient(sock string) *http.Client {
	return &http.Client{Timeout: WaitTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// TestMetrics: GET /metrics on the control socket and on metrics_listen
// parses with Prometheus's text parser and counts a kill and the plugin's
// respawn; the TCP listener serves nothing but /metrics.
func TestMetrics(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{Detector: "pidfd"})
	h.WriteFile(h.Config, strings.Replace(h.ConfigText(`
[service.victim]
command    = "sleep infinity"
start_secs = "0s"

[service.idle]
command   = "sleep infinity"
autostart = false
`), "[hbd]\n", "[hbd]\nmetrics_listen = \"127.0.0.1:0\"\n", 1))
	d := h.Start()
	first := h.WaitRunning("victim")["victim"]
	h.Kill(first.PID, syscall.SIGKILL)
	h.WaitSlot("victim", "respawned", func(s shm.Slot) bool { return s.Generation == 2 && s.PID != 0 })
	h.WaitService("victim", "running again", func(st api.ServiceStatus) bool { return IsRunning(st) && st.Generation == 2 })

	m := regexp.MustCompile(`metrics: listening.*addr=(127\.0\.0\.1:[0-9]+)`).FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("no metrics address in hbd's log:\n%s", tail(d.Log(), 20))
	}
	tcp := &http.Client{Timeout: WaitTimeout}
	for _, src := range []struct {
		name string
		get  func() string
	}{
		{"control socket", func() string { return scrape(t, unixClient(h.Socket), "http://hbd/metrics") }},
		{"metrics_listen", func() string { return scrape(t, tcp, "http://"+m[1]+"/metrics") }},
	} {
		h.Run(src.name, func(t *testing.T) {
			fams := metricstest.Parse(t, src.get())
			for _, w := range []struct {
				name string
				lbl  []string
				want float64
			}{
				{"hb_service_up", []string{"service", "victim"}, 1},
				{"hb_service_up", []string{"service", "idle"}, 0},
				{"hb_service_state", []string{"service", "victim", "state", "running"}, 1},
				{"hb_service_state", []string{"service", "idle", "state", "stopped"}, 1},
				{"hb_service_state", []string{"service", "idle", "state", "running"}, 0},
				{"hb_service_restarts_total", []string{"service", "victim"}, 1},
				{"hb_service_exits_total", []string{"service", "victim"}, 1},
				{"hb_service_last_exit_status", []string{"service", "victim"}, 137},
				{"hb_plugin_up", nil, 1},
				{"hb_detector_active", []string{"detector", "pidfd"}, 1},
				{"hb_detector_active", []string{"detector", "connector"}, 0},
				{"hb_connector_resyncs_total", nil, 0},
				{"hb_events_missed_total", nil, 0},
				{"hb_exit_detect_to_store_seconds", nil, 1}, // the count: one exit cleared a slot
				{"hb_respawn_seconds", nil, 1},              // and the plugin respawned it
			} {
				if got, ok := metricstest.Value(fams, w.name, w.lbl...); !ok || got != w.want {
					t.Errorf("%s%v = %v (present %v), want %v", w.name, w.lbl, got, ok, w.want)
				}
			}
			start, ok := metricstest.Value(fams, "hb_service_start_time_seconds", "service", "victim")
			if now := float64(time.Now().Unix()); !ok || start < now-WaitTimeout.Seconds() || start > now+1 {
				t.Errorf("hb_service_start_time_seconds{victim} = %v (present %v), want about now (%v)", start, ok, now)
			}
			if _, ok := metricstest.Value(fams, "hb_service_start_time_seconds", "service", "idle"); ok {
				t.Error("a start time for a service that never started")
			}
		})
	}
	h.Run("tcp serves metrics only", func(t *testing.T) {
		resp, err := tcp.Get("http://" + m[1] + "/v1/services")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /v1/services on metrics_listen: %s, want 404", resp.Status)
		}
	})
}

// TestCompletion: the scripts hbctl prints complete commands, flags and
// the running hbd's service names in a real bash (and fish, and parse in
// zsh, where those shells are installed).
func TestCompletion(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.alpha]
command = "sleep infinity"

[service.beta]
command = "sleep infinity"
`)
	h.Start()
	h.WaitRunning("alpha", "beta")
	dir := filepath.Dir(h.HBCtl)
	path := "PATH=" + dir + ":" + os.Getenv("PATH")
	script := func(shell string) string {
		f := filepath.Join(h.Dir, "hbctl."+shell)
		if err := os.WriteFile(f, []byte(h.MustCtl("completion", shell)), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	bash := script("bash")
	complete := func(t *testing.T, words ...string) []string {
		t.Helper()
		// COMP_WORDS as bash splits the line; the last word is the one completed.
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, strconv.Quote(w))
		}
		prog := fmt.Sprintf(`source %s; COMP_WORDS=(%s); COMP_CWORD=%d; _hbctl; printf '%%s\n' "${COMPREPLY[@]}"`,
			bash, strings.Join(quoted, " "), len(words)-1)
		cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
		cmd.Env = append(os.Environ(), path)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}
	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"hbctl", "re"}, []string{"reexec", "reload", "restart"}},
		{[]string{"hbctl", "-s", h.Socket, "restart", ""}, []string{"alpha", "beta"}},
		{[]string{"hbctl", "-s", h.Socket, "logs", "a"}, []string{"alpha"}},
		{[]string{"hbctl", "-s", h.Socket, "stop", "--a"}, []string{"--all"}},
		{[]string{"hbctl", "wait", "--t"}, []string{"--timeout"}},
		{[]string{"hbctl", "completion", ""}, []string{"bash", "fish", "zsh"}},
		{[]string{"hbctl", "-s", filepath.Join(h.Dir, "nobody.sock"), "restart", ""}, nil}, // no hbd: no names, no noise
	} {
		if got := complete(t, tc.words...); !slices.Equal(got, tc.want) {
			t.Errorf("complete %q = %q, want %q", tc.words, got, tc.want)
		}
	}
	h.Run("fish", func(t *testing.T) {
		if _, err := exec.LookPath("fish"); err != nil {
			t.Skip("fish is not installed")
		}
		cmd := exec.Command("fish", "--no-config", "-c", fmt.Sprintf("source %s; complete -C 'hbctl -s %s restart '", script("fish"), h.Socket))
		cmd.Env = append(os.Environ(), path)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		if got := strings.Fields(string(out)); !slices.Contains(got, "alpha") || !slices.Contains(got, "beta") {
			t.Errorf("fish completes %q, want alpha and beta", got)
		}
	})
	h.Run("zsh", func(t *testing.T) {
		if _, err := exec.LookPath("zsh"); err != nil {
			t.Skip("zsh is not installed")
		}
		if out, err := exec.Command("zsh", "-n", script("zsh")).CombinedOutput(); err != nil {
			t.Errorf("zsh -n: %v\n%s", err, out)
		}
	})
}

// TestLogsCommand: hbctl logs prints a service's stdout or stderr log,
// follows it across the rotations at each spawn, and hbctl status NAME
// shows where the logs are and a failed service's last stderr lines.
func TestLogsCommand(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	h.WriteConfig(fmt.Sprintf(`
[service.talker]
command = ["sh", "-c", "echo out-1; echo out-2; echo err-1 >&2; echo err-2 >&2; exit 1"]
restart = "never"

[service.cycler]
command       = ["sh", "-c", "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo cycle-$n; sleep 0.5"]
directory     = %q
start_secs    = "0s"
log_max_bytes = 1
log_backups   = 20

[service.quiet]
command = "sleep infinity"
stdout  = "null"
`, h.Dir))
	h.Start()
	h.WaitService("talker", "exited 1", func(st api.ServiceStatus) bool { return st.State == "exited" && st.LastStatus == 1 })
	out := filepath.Join(h.LogDir, "talker.out.log")
	h.Run("logs", func(t *testing.T) {
		if got := h.MustCtl("logs", "talker"); got != "out-1\nout-2\n" {
			t.Errorf("logs talker = %q", got)
		}
		if got := h.MustCtl("logs", "talker", "--stderr", "-n", "1"); got != "err-2\n" {
			t.Errorf("logs talker --stderr -n 1 = %q", got)
		}
		if r := h.Ctl("logs", "quiet"); r.Code != 1 || !strings.Contains(r.Stderr, `stdout = "null"`) {
			t.Errorf("logs of a null stdout: %v", r)
		}
		if r := h.Ctl("logs", "nosuch"); r.Code != 1 || !strings.Contains(r.Stderr, `no service "nosuch"`) {
			t.Errorf("logs of no service: %v", r)
		}
	})
	h.Run("status NAME", func(t *testing.T) {
		// talker exited with a failure: not in its wanted state, exit 3.
		r := h.Ctl("status", "talker")
		if r.Code != 3 {
			t.Errorf("status talker: %v; want exit 3 (it failed)", r)
		}
		got := r.Stdout
		for _, want := range []string{"stdout: " + out, "stderr: " + filepath.Join(h.LogDir, "talker.err.log"), "last stderr lines", "    err-1\n    err-2\n"} {
			if !strings.Contains(got, want) {
				t.Errorf("status talker lacks %q:\n%s", want, got)
			}
		}
		if got := h.MustCtl("status", "quiet"); !strings.Contains(got, "stdout: null") || strings.Contains(got, "last stderr lines") {
			t.Errorf("status quiet (running):\n%s", got)
		}
	})
	h.Run("follow across rotations", func(t *testing.T) {
		h.WaitService("cycler", "spawned", func(st api.ServiceStatus) bool { return st.Generation >= 1 })
		pid, wait := h.StartCtl("logs", "cycler", "-f", "-n", "0")
		start := h.ServiceStatus("cycler").Generation
		h.WaitService("cycler", "6 more spawns (rotations)", func(st api.ServiceStatus) bool { return st.Generation >= start+6 })
		syscall.Kill(pid, syscall.SIGINT)
		r := wait()
		if r.Code != 0 {
			t.Fatalf("logs -f: %v", r)
		}
		lines := strings.Fields(r.Stdout)
		if len(lines) < 4 {
			t.Fatalf("logs -f printed %d lines across 6 rotations: %v", len(lines), r)
		}
		var first int
		fmt.Sscanf(lines[0], "cycle-%d", &first)
		for i, l := range lines {
			if l != fmt.Sprintf("cycle-%d", first+i) {
				t.Fatalf("logs -f line %d is %q, want cycle-%d (each line once, in order):\n%s", i, l, first+i, r.Stdout)
			}
		}
		if _, err := os.Stat(filepath.Join(h.LogDir, "cycler.out.log.5")); err != nil {
			t.Errorf("no 5th rotated file: %v", err)
		}
	})
	h.Run("tail -F across rotations", func(t *testing.T) {
		// The rotation at a spawn is a rename, after the writer has
		// exited: tail -F reads the old file to its end, then the new one.
		if _, err := exec.LookPath("tail"); err != nil {
			t.Skip("tail is not installed")
		}
		cmd := exec.Command("tail", "-F", "-n", "0", filepath.Join(h.LogDir, "cycler.out.log"))
		var out, errb syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h.Track(cmd.Process.Pid)
		start := h.ServiceStatus("cycler").Generation
		h.WaitService("cycler", "6 more spawns (rotations)", func(st api.ServiceStatus) bool { return st.Generation >= start+6 })
		cmd.Process.Kill()
		cmd.Wait()
		lines := strings.Fields(out.String())
		if len(lines) < 4 {
			t.Fatalf("tail -F printed %d lines across 6 rotations: %q; stderr %q", len(lines), out.String(), errb.String())
		}
		var first int
		fmt.Sscanf(lines[0], "cycle-%d", &first)
		for i, l := range lines {
			if l != fmt.Sprintf("cycle-%d", first+i) {
				t.Fatalf("tail -F line %d is %q, want cycle-%d (each line once, in order):\n%s", i, l, first+i, out.String())
			}
		}
	})
}

// makeCmd runs make in the module root with args and fails the test unless
// it succeeds; it returns make's output.
func makeCmd(t *testing.T, args ...string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", root}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %q: %v\n%s", args, err, tail(string(out), 30))
	}
	return string(out)
}

// TestMakeInstall: make install into a DESTDIR puts every part where
// PREFIX says with the installed paths filled in, keeps an existing
// /etc/hb/hb.toml, and make uninstall takes it away again; installed under
// a PREFIX, the unit passes systemd-analyze verify (where it exists), the
// man pages render with man -l, the pkg-config file compiles a C reader,
// hbctl reports make's version, and the installed hbd runs the installed
// example configuration.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	t.Parallel()
	h := NewHarness(t, Options{})
	tmp := filepath.Join(h.Dir, "install")
	bin := "BIN=" + filepath.Join(tmp, "build") // not the checkout's bin/
	dest := filepath.Join(tmp, "dest")

	h.Run("DESTDIR", func(t *testing.T) {
		out := makeCmd(t, "install", "DESTDIR="+dest, bin)
		if !strings.Contains(out, "wrote "+dest+"/etc/hb/hb.toml") {
			t.Errorf("no hb.toml written:\n%s", tail(out, 5))
		}
		files := []string{
			"usr/local/bin/hbd", "usr/local/bin/hbctl", "usr/local/bin/hbpeek",
			"usr/local/include/hb_shm.h", "usr/local/share/pkgconfig/hb.pc",
			"usr/local/share/man/man8/hbd.8", "usr/local/share/man/man8/hbctl.8", "usr/local/share/man/man5/hb.toml.5",
			"usr/local/share/bash-completion/completions/hbctl", "usr/local/share/zsh/site-functions/_hbctl",
			"usr/local/share/fish/vendor_completions.d/hbctl.fish",
			"usr/local/lib/systemd/system/hbd.service", "usr/local/share/hb/runit/hbd/run",
			"usr/local/share/hb/s6/hbd/run", "usr/local/share/hb/supervisord/hbd.conf",
			"etc/hb/hb.toml",
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
				t.Errorf("not installed: %v", err)
			}
		}
		unit, _ := os.ReadFile(filepath.Join(dest, "usr/local/lib/systemd/system/hbd.service"))
		if !strings.Contains(string(unit), "\nExecStart=/usr/local/bin/hbd -c /etc/hb/hb.toml\n") {
			t.Errorf("unit's ExecStart:\n%s", unit)
		}
		// An operator's configuration survives a second install and the uninstall.
		mine := []byte("# mine\n")
		os.WriteFile(filepath.Join(dest, "etc/hb/hb.toml"), mine, 0o644)
		if out := makeCmd(t, "install", "DESTDIR="+dest, bin); !strings.Contains(out, "kept "+dest+"/etc/hb/hb.toml") {
			t.Errorf("second install does not say it kept hb.toml:\n%s", tail(out, 5))
		}
		makeCmd(t, "uninstall", "DESTDIR="+dest, bin)
		for _, f := range files[:len(files)-1] {
			if _, err := os.Stat(filepath.Join(dest, f)); err == nil {
				t.Errorf("left by uninstall: %s", f)
			}
		}
		if got, _ := os.ReadFile(filepath.Join(dest, "etc/hb/hb.toml")); string(got) != string(mine) {
			t.Errorf("hb.toml after install and uninstall: %q", got)
		}
	})

	prefix, etc := filepath.Join(tmp, "p"), filepath.Join(tmp, "etc")
	makeCmd(t, "install", "PREFIX="+prefix, "SYSCONFDIR="+etc, bin)
	hbd, hbctl := filepath.Join(prefix, "bin/hbd"), filepath.Join(prefix, "bin/hbctl")
	conf := filepath.Join(etc, "hb/hb.toml")
	h.Run("unit", func(t *testing.T) {
		unitPath := filepath.Join(prefix, "lib/systemd/system/hbd.service")
		unit, _ := os.ReadFile(unitPath)
		if !strings.Contains(string(unit), "\nExecStart="+hbd+" -c "+conf+"\n") {
			t.Errorf("unit's ExecStart does not name the installed paths:\n%s", unit)
		}
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze is not installed")
		}
		if out, err := exec.Command("systemd-analyze", "verify", unitPath).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
	h.Run("man", func(t *testing.T) {
		if _, err := exec.LookPath("man"); err != nil {
			t.Skip("man is not installed (Debian: man-db)")
		}
		for _, p := range []string{"man8/hbd.8", "man8/hbctl.8", "man5/hb.toml.5"} {
			cmd := exec.Command("man", "--warnings", "-l", filepath.Join(prefix, "share/man", p))
			cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 || !strings.Contains(string(out), "NAME") {
				t.Errorf("man -l %s: %v\n%s\n%.300s", p, err, stderr.String(), out)
			}
		}
	})
	h.Run("pkg-config", func(t *testing.T) {
		if _, err := exec.LookPath("pkg-config"); err != nil {
			t.Skip("pkg-config is not installed")
		}
		cmd := exec.Command("pkg-config", "--cflags", "hb")
		cmd.Env = append(os.Environ(), "PKG_CONFIG_PATH="+filepath.Join(prefix, "share/pkgconfig"))
		cflags, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(cflags)) != "-I"+filepath.Join(prefix, "include") {
			t.Fatalf("pkg-config --cflags hb = %q, %v", cflags, err)
		}
		root, _ := moduleRoot()
		// The reader compiles against the installed header alone.
		c := exec.Command("gcc", "-std=c11", "-Wall", "-Werror", strings.TrimSpace(string(cflags)), "-o", filepath.Join(tmp, "hbpeek"), filepath.Join(root, "contrib/c/hbpeek.c"))
		c.Dir = tmp
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("gcc with the installed hb.pc: %v\n%s", err, out)
		}
	})
	h.Run("version", func(t *testing.T) {
		out, err := exec.Command(hbctl, "--version").Output()
		if err != nil || !strings.HasPrefix(string(out), "hbctl ") || strings.Contains(string(out), "(devel)") {
			t.Errorf("installed hbctl --version = %q, %v; want make's git describe", out, err)
		}
		if out, err := exec.Command(hbd, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "hbd ") {
			t.Errorf("installed hbd --version = %q, %v", out, err)
		}
	})
	h.Run("runs the example", func(t *testing.T) {
		if out, err := exec.Command(hbd, "--check", "-c", conf).CombinedOutput(); err != nil {
			t.Fatalf("hbd --check on the installed example: %v\n%s", err, out)
		}
		// The example with the harness's private paths instead of /run/hb.
		example, _ := os.ReadFile(conf)
		text := string(example)
		for k, v := range map[string]string{"shm": h.Shm, "socket": h.Socket, "state_dir": h.StateDir, "log_dir": h.LogDir} {
			text = regexp.MustCompile(`(?m)^`+k+`\s*=.*$`).ReplaceAllString(text, fmt.Sprintf("%s = %q", k, v))
		}
		h.WriteFile(h.Config, text)
		h.HBD, h.HBCtl = hbd, hbctl
		h.Start()
		h.MustCtl("start", "example")
		h.WaitRunning("example")
	})
}

// TestLogPipeRotationAndPluginDeath: a running service's log is rotated by
// rename at line ends (log_max_bytes 16 KiB, a few rotations a second: a
// tail -F that is not scheduled for a whole rotation's time follows the
// newest file and never sees the one in between, however the rotation is
// done),
// and the plugin is SIGKILLed and replaced while the service writes, before
// and after hbd itself is replaced: the service keeps its PID (no SIGPIPE:
// hbd held its pipe and handed it to the new plugin), and both a real tail -F of the log and the rotated files
// show every line exactly once, whole and in order, and so does hbctl logs
// -f.
func TestLogPipeRotationAndPluginDeath(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("tail"); err != nil {
		t.Skip("tail is not installed")
	}
	h := NewHarness(t, Options{})
	h.WriteConfig(`
[service.writer]
command       = ["sh", "-c", "i=0; while :; do echo line-$i; i=$((i+1)); [ $((i % 40)) = 0 ] && sleep 0.01; done"]
log_max_bytes = 16384
log_backups   = 1000
`)
	d := h.Start()
	st := h.WaitService("writer", "running", func(st api.ServiceStatus) bool { return st.State == "running" && st.PID != 0 })
	live := filepath.Join(h.LogDir, "writer.out.log")
	cmd := exec.Command("tail", "-F", "-n", "0", live)
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.Track(cmd.Process.Pid)
	ctlPID, ctlWait := h.StartCtl("logs", "writer", "-f", "-n", "0")
	rotated := func(n int) {
		h.Eventually(fmt.Sprintf("%d rotations", n), func() (bool, string) {
			_, err := os.Stat(live + "." + strconv.Itoa(n))
			return err == nil, fmt.Sprint(err)
		})
	}
	rotated(5)
	old := pluginPID(h)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	old = waitNewPlugin(h, old)
	rotated(countFiles(live) + 5) // the new plugin reads the same pipe and rotates on
	// A new hbd, attached to the running plugin, takes its copies of the
	// pipes from it: the plugin's next death loses nothing either.
	d.Signal(syscall.SIGQUIT)
	if code := d.Wait(); code != 0 {
		t.Fatalf("hbd exited %d after SIGQUIT", code)
	}
	h.Start()
	h.WaitService("writer", "kept", func(now api.ServiceStatus) bool { return now.PID == st.PID && now.State == "running" })
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNewPlugin(h, old)
	rotated(countFiles(live) + 5)
	cmd.Process.Kill()
	cmd.Wait()
	syscall.Kill(ctlPID, syscall.SIGINT)
	ctl := ctlWait()
	if ctl.Code != 0 {
		t.Fatalf("hbctl logs -f: %v", ctl)
	}
	if now := h.ServiceStatus("writer"); now.PID != st.PID || now.Generation != st.Generation {
		t.Fatalf("writer is pid %d generation %d after the plugin's death; want %d/%d (it must not have died)", now.PID, now.Generation, st.PID, st.Generation)
	}
	consecutive := func(what, text string, mayCutLast bool) {
		t.Helper()
		lines := strings.Split(text, "\n")
		if mayCutLast {
			lines = lines[:len(lines)-1] // the last line may not be complete yet
		}
		if len(lines) < 100 {
			t.Fatalf("%s: %d lines; want many", what, len(lines))
		}
		var first int
		if _, err := fmt.Sscanf(lines[0], "line-%d", &first); err != nil {
			t.Fatalf("%s: first line %q", what, lines[0])
		}
		for i, l := range lines {
			if l != fmt.Sprintf("line-%d", first+i) {
				t.Fatalf("%s: line %d is %q, want line-%d (each line once, whole, in order); stderr %q", what, i, l, first+i, errb.String())
			}
		}
	}
	if strings.Contains(errb.String(), "inaccessible") {
		t.Errorf("tail -F found the live log's name missing during a rotation: %q", errb.String())
	}
	consecutive("tail -F", out.String(), true)
	consecutive("hbctl logs -f", ctl.Stdout, true)
	var files strings.Builder
	for k := countFiles(live); k >= 0; k-- {
		name := live
		if k > 0 {
			name += "." + strconv.Itoa(k)
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if k > 0 && (len(b) == 0 || b[len(b)-1] != '\n' || len(b) > 16384) {
			t.Fatalf("%s: %d bytes, ends %q: want whole lines within log_max_bytes", name, len(b), b[max(0, len(b)-20):])
		}
		files.Write(b)
	}
	consecutive("the rotated files", files.String(), true)
}

// countFiles is the highest N for which path.N exists.
func countFiles(path string) int {
	n := 0
	for {
		if _, err := os.Stat(path + "." + strconv.Itoa(n+1)); err != nil {
			return n
		}
		n++
	}
}

// TestLogPipeLastWordsWhilePluginAway: a service writes its last line and
// exits while its plugin cannot read (stopped, then killed): the next
// plugin, handed the pipe by hbd, writes that line into the log before the
// exit is reported.
func TestLogPipeLastWordsWhilePluginAway(t *testing.T) {
	t.Parallel()
	h := NewHarness(t, Options{})
	gate := filepath.Join(h.Dir, "gate")
	h.WriteConfig(fmt.Sprintf(`
[service.talker]
command = ["sh", "-c", "echo first; while [ ! -e %s ]; do sleep 0.01; done; echo last words; exit 3"]
restart = "never"
`, gate))
	h.Start()
	st := h.WaitService("talker", "running", func(st api.ServiceStatus) bool { return st.State == "running" && st.PID != 0 })
	log := filepath.Join(h.LogDir, "talker.out.log")
	h.Eventually("the first line in the log", func() (bool, string) {
		b, _ := os.ReadFile(log)
		return string(b) == "first\n", string(b)
	})
	plugin := pluginPID(h)
	h.StopProcess(plugin)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.WaitGone(st.PID) // it wrote its last line into the pipe and exited
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNewPlugin(h, plugin)
	h.WaitService("talker", "exited 3", func(st api.ServiceStatus) bool { return st.State == "exited" && st.LastStatus == 3 })
	if b, _ := os.ReadFile(log); string(b) != "first\nlast words\n" {
		t.Errorf("log %q once the exit is reported; want the line written while no plugin read", b)
	}
}
