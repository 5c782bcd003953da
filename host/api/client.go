package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Client talks to hbd's control socket. It is safe for concurrent use. Its
// methods return *APIError for an error answer from hbd, an error wrapping
// ErrUnreachable when hbd could not be talked to, and ctx's error when ctx
// ended first.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at socketPath. Nothing is
// dialled until the first call.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:       4,
		IdleConnTimeout:    30 * time.Second,
		DisableCompression: true,
	}
	return &Client{path: socketPath, hc: &http.Client{Transport: tr}}
}

// Close closes the client's idle connections. The client stays usable; it
// dials again when needed.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Path returns the socket path the client dials.
func (c *Client) Path() string { return c.path }

// List returns every service, in config order.
func (c *Client) List(ctx context.Context) ([]ServiceStatus, error) {
	var out []ServiceStatus
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
	return out, err
}

// Get returns one service; a missing one is an *APIError matching ErrNotFound.
func (c *Client) Get(ctx context.Context, name string) (ServiceStatus, error) {
	var out ServiceStatus
	err := c.do(ctx, http.MethodGet, "/v1/services/"+url.PathEscape(name), nil, &out)
	return out, err
}

// Start starts the named services and returns their status afterwards.
func (c *Client) Start(ctx context.Context, names ...string) ([]ServiceStatus, error) {
	return c.action(ctx, "start", Selection{Names: names})
}

// Stop stops the named services and returns their status afterwards.
func (c *Client) Stop(ctx context.Context, names ...string) ([]ServiceStatus, error) {
	return c.action(ctx, "stop", Selection{Names: names})
}

// Restart restarts the named services and returns their status afterwards.
func (c *Client) Restart(ctx context.Context, names ...string) ([]ServiceStatus, error) {
	return c.action(ctx, "restart", Selection{Names: names})
}

// StartAll starts every service.
func (c *Client) StartAll(ctx context.Context) ([]ServiceStatus, error) {
	return c.action(ctx, "start", Selection{All: true})
}

// StopAll stops every service (hbd stops them in reverse config order).
func (c *Client) StopAll(ctx context.Context) ([]ServiceStatus, error) {
	return c.action(ctx, "stop", Selection{All: true})
}

// RestartAll restarts every service.
func (c *Client) RestartAll(ctx context.Context) ([]ServiceStatus, error) {
	return c.action(ctx, "restart", Selection{All: true})
}

func (c *Client) action(ctx context.Context, action string, sel Selection) ([]ServiceStatus, error) {
	var out []ServiceStatus
	err := c.do(ctx, http.MethodPost, "/v1/"+action, sel, &out)
	return out, err
}

// Signal sends sig to the service's main process and returns its status.
func (c *Client) Signal(ctx context.Context, name string, sig syscall.Signal) (ServiceStatus, error) {
	var out ServiceStatus
	body := map[string]string{"signal": SignalName(sig)}
	err := c.do(ctx, http.MethodPost, "/v1/services/"+url.PathEscape(name)+"/signal", body, &out)
	return out, err
}

// Reload asks hbd to re-read its configuration. A rejected configuration is
// an *APIError matching ErrInvalidConfig, with one Details line per problem.
func (c *Client) Reload(ctx context.Context) (ReloadResult, error) {
	var out ReloadResult
	err := c.do(ctx, http.MethodPost, "/v1/reload", nil, &out)
	return out, err
}

// Reexec asks hbd to re-execute itself (the plugin and services run on);
// the answer is the health of the hbd before it does.
func (c *Client) Reexec(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodPost, "/v1/reexec", nil, &out)
	return out, err
}

// Health returns hbd's health. When hbd answers that it is not healthy (503),
// the Health is returned along with an *APIError.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	err := c.do(ctx, http.MethodGet, "/v1/health", nil, &out)
	return out, err
}

// Events subscribes to hbd's event stream. When it returns, hbd has
// subscribed: every event from then on is delivered. The channel is closed
// when ctx ends or the stream ends (hbd went away).
func (c *Client) Events(ctx context.Context) (<-chan Event, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://hb/v1/events", nil)
	if err != nil {
		return nil, fmt.Errorf("api: events: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.transportErr(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp, nil)
	}
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var ev Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// IsUp reports whether st counts as up for Wait: state running with a PID.
func IsUp(st ServiceStatus) bool { return st.State == "running" && st.PID != 0 }

// IsDown reports whether st counts as down for Wait: no process (PID 0), the
// same test a peer makes on the shm slot.
func IsDown(st ServiceStatus) bool { return st.PID == 0 }

// Wait blocks until the service is up (IsUp) or, with up false, down
// (IsDown), and returns its status then. It never polls: it subscribes to
// events, reads the status, and reads it again only after an event about
// the service (or a reload). It fails with an *APIError matching ErrNotFound
// when the service does not exist (or is removed meanwhile), with an error
// wrapping ErrUnreachable when hbd goes away, and with ctx's error at the
// deadline (the last status seen is returned then).
func (c *Client) Wait(ctx context.Context, name string, up bool) (ServiceStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, err := c.Events(ctx)
	if err != nil {
		return ServiceStatus{}, err
	}
	reached := IsDown
	if up {
		reached = IsUp
	}
	for {
		st, err := c.Get(ctx, name)
		if err != nil {
			return st, err
		}
		if reached(st) {
			return st, nil
		}
	events:
		for {
			select {
			case <-ctx.Done():
				return st, ctx.Err()
			case ev, ok := <-evs:
				if !ok {
					if ctx.Err() != nil {
						return st, ctx.Err()
					}
					return st, fmt.Errorf("%w at %s: event stream ended", ErrUnreachable, c.path)
				}
				if !up && ev.Name == name && ev.Kind == EventExit {
					// Down happened, even if a respawn already followed it
					// by the time a Get could look.
					st.PID, st.State = 0, "exited"
					st.LastStatus, st.Generation = ev.Status, ev.Generation
					return st, nil
				}
				if ev.Name == name || ev.Kind == EventReload {
					break events
				}
			}
		}
	}
}

// do sends one request with body (if not nil) as JSON and decodes the
// answer into out.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("api: %s %s: encoding request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://hb"+path, rd)
	if err != nil {
		return fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportErr(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp, out)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("api: %s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// transportErr classifies an error from http.Client.Do.
func (c *Client) transportErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return &unreachableError{path: c.path, err: err}
}

type unreachableError struct {
	path string
	err  error
}

func (e *unreachableError) Error() string {
	cause := e.err
	var oe *net.OpError
	if errors.As(cause, &oe) && oe.Op == "dial" && oe.Err != nil {
		cause = oe.Err // "connect: no such file or directory", without the path again
	}
	return fmt.Sprintf("%s at %s: %v", ErrUnreachable, e.path, cause)
}

func (e *unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// decodeError turns a non-2xx answer into an *APIError. A 503 from
// /v1/health carries a Health, decoded into out when it is a *Health.
func decodeError(resp *http.Response, out any) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	ae := &APIError{Status: resp.StatusCode}
	if h, ok := out.(*Health); ok && resp.StatusCode == http.StatusServiceUnavailable {
		if json.Unmarshal(b, h) == nil && h.Error != "" {
			ae.Message = h.Error
			return ae
		}
	}
	var e Error
	if err := json.Unmarshal(b, &e); err == nil && e.Error != "" {
		ae.Message, ae.Details, ae.Services = e.Error, e.Details, e.Services
		return ae
	}
	ae.Message = strings.TrimSpace(string(b))
	if ae.Message == "" {
		ae.Message = http.StatusText(resp.StatusCode)
	}
	ae.Message = fmt.Sprintf("hbd answered %d: %s", resp.StatusCode, ae.Message)
	return ae
}
