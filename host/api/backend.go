package api

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/hbshim/hb/host/signame"
)

// Backend is what the server serves: the manager implements it. Every method
// may be called concurrently from many requests. Errors wrap ErrNotFound,
// ErrBadRequest, ErrConflict or ErrInvalidConfig (via InvalidConfig) to get
// 404, 400, 409 or 422; any other error is a 500. An error that implements
// Detailer, or is an errors.Join of several, is sent with one Details line
// per problem.
type Backend interface {
	// List returns every service, in config order.
	List() []ServiceStatus
	// Get returns one service, or an error wrapping ErrNotFound.
	Get(name string) (ServiceStatus, error)
	// Start starts the named services (already running ones are left alone).
	Start(names []string) error
	// Stop stops the named services and returns once they have exited. For
	// --all the server passes Names() in reverse.
	Stop(names []string) error
	// Restart stops then starts the named services.
	Restart(names []string) error
	// Signal sends sig to the service's main process (ErrConflict when none runs).
	Signal(name string, sig syscall.Signal) error
	// Reload re-reads the configuration and applies it. A configuration that
	// does not validate is rejected as a whole with InvalidConfig(err).
	Reload() (ReloadResult, error)
	// Subscribe returns the live event stream. The backend sends each event
	// after the state Get returns reflects it (so a client that sees an event
	// and then calls Get sees that state or a later one), never blocks on a
	// slow subscriber (it may drop the subscriber by closing its channel),
	// and closes the channel once ctx is done.
	Subscribe(ctx context.Context) <-chan Event
	// Names returns every service name in start order: the config order,
	// each service after those its after list names (for --all).
	Names() []string
}

// PluginInfoer is optionally implemented by a Backend to add the plugin's
// description to GET /v1/health. An error makes the health check fail (503).
type PluginInfoer interface {
	PluginInfo(ctx context.Context) (PluginInfo, error)
}

// MetricsWriter is optionally implemented by a Backend to serve GET
// /metrics: it writes the Prometheus text exposition format (version
// 0.0.4, MetricsContentType). An error is a 500.
type MetricsWriter interface {
	WriteMetrics(ctx context.Context, w io.Writer) error
}

// MetricsContentType is the Content-Type of GET /metrics: the Prometheus
// text format 0.0.4 (Prometheus 3 refuses a scrape without a valid one).
const MetricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// ParseSignal parses a signal as the control API accepts it (signame.Parse:
// a name with or without SIG in any case, or a number 1..64, nothing
// around it). Its errors wrap ErrBadRequest.
func ParseSignal(s string) (syscall.Signal, error) {
	sig, err := signame.Parse(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", ErrBadRequest, strings.TrimPrefix(err.Error(), signame.ErrSyntax.Error()+": "))
	}
	return sig, nil
}

// SignalName returns "HUP" for SIGHUP, or the number for signals without a name.
func SignalName(sig syscall.Signal) string { return signame.Name(sig) }

// Expander is implemented by a backend with services that stand for
// several (instances = N): Expand replaces each such name by its
// instances' names and leaves the others. The server expands the names of
// POST /v1/start, /v1/stop and /v1/restart with it, so that the answer has
// one status per instance.
type Expander interface {
	Expand(names []string) []string
}

// Reexecer is implemented by a backend that can re-execute itself (POST
// /v1/reexec): it answers first, then hbd detaches from the plugin and
// executes its binary again with the same PID, the plugin and services
// running on.
type Reexecer interface {
	Reexec() error
}
