package plugin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hbshim/hb/plugin"
	"github.com/hbshim/hb/plugin/plugintest"
)

// The test binary doubles as the plugin and as a throw-away host: TestMain
// dispatches on helperEnv before any test runs.
const (
	helperEnv = "HB_PLUGIN_TEST_HELPER" // "plugin" or "host"
	logEnv    = "HB_PLUGIN_TEST_LOG"    // plugin: its log file
	dirEnv    = "HB_PLUGIN_TEST_DIR"    // host: the state directory
	fakeSlots = 4
	// stdioService is a service name that makes the fake write to
	// descriptor 1 (the pipe to the host that launched it).
	stdioService = "__stdio"
)

// inheritedStdout is the plugin's original stdout: the pipe to the host
// that launched it.
var inheritedStdout *os.File

// pluginArgs are the arguments the plugin is launched with (and Reattach checks).
var pluginArgs = []string{"plugin", "--test"}

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "plugin":
		os.Exit(runPlugin())
	case "host":
		os.Exit(runHost())
	case "reattach":
		os.Exit(runReattach())
	}
	os.Exit(m.Run())
}

// runPlugin serves a fakeShim; it logs to $HB_PLUGIN_TEST_LOG.
func runPlugin() int {
	logf, err := os.OpenFile(os.Getenv(logEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f := newTestShim(logf)
	inheritedStdout = os.Stdout // plugin.Serve replaces os.Stdout
	err = plugin.Serve(f, logf, nil)
	fmt.Fprintf(logf, "serve returned: %v\n", err)
	if err != nil {
		return 1
	}
	return 0
}

// runHost launches a plugin in $HB_PLUGIN_TEST_DIR, spawns one service,
// detaches and exits, leaving the plugin behind with broken stdio pipes.
func runHost() int {
	dir := os.Getenv(dirEnv)
	conn, err := plugin.Launch(pluginConfig(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := conn.Shim().Spawn(context.Background(), plugin.Spec{Name: "orphan", Command: []string{"x"}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := conn.Detach(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(conn.PID())
	return 0
}

// runReattach reattaches to the plugin in $HB_PLUGIN_TEST_DIR, prints
// Reattach's error (or "attached PID"), and detaches. It exits 0 only if it
// attached.
func runReattach() int {
	conn, err := plugin.Reattach(os.Getenv(dirEnv), nil)
	if err != nil {
		fmt.Println(err)
		if errors.Is(err, plugin.ErrHostConnected) {
			return 3
		}
		return 1
	}
	fmt.Println("attached", conn.PID())
	_ = conn.Detach()
	return 0
}

// pluginConfig launches this test binary as the plugin, state in dir.
func pluginConfig(dir string) plugin.LaunchConfig {
	return plugin.LaunchConfig{
		Args: pluginArgs,
		Env: []string{
			helperEnv + "=plugin",
			logEnv + "=" + filepath.Join(dir, "plugin.log"),
			// A -race plugin would otherwise linger a second at exit.
			strings.TrimSpace("GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"),
		},
		StateDir: dir,
	}
}

// testShim is the plugin the helper serves: a plugintest.Shim that reports
// the helper's real PID, logs its Shutdown, and writes to its inherited
// stdout when signalled as stdioService.
type testShim struct {
	*plugintest.Shim
	log io.Writer
}

func newTestShim(log io.Writer) *testShim {
	return &testShim{Shim: plugintest.New(fakeSlots), log: log}
}

func (f *testShim) Info(ctx context.Context) (plugin.Info, error) {
	info, err := f.Shim.Info(ctx)
	info.PID, info.Version = os.Getpid(), "test"
	return info, err
}

func (f *testShim) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	if name == stdioService {
		// Write to the pipe the launching host reads, through the *os.File
		// (which raises SIGPIPE on EPIPE for descriptors 1 and 2); once that
		// host is gone this is a broken pipe.
		_, err := inheritedStdout.Write([]byte("hello from the plugin\n"))
		return fmt.Errorf("fake: stdout write: %v", err)
	}
	return f.Shim.Signal(ctx, name, sig)
}

func (f *testShim) Shutdown(ctx context.Context, clean bool) error {
	fmt.Fprintf(f.log, "fake shutdown clean=%v\n", clean)
	return f.Shim.Shutdown(ctx, clean)
}
