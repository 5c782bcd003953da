package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of the server. A request body larger than MaxBodyBytes is answered 413.
const (
	MaxBodyBytes      = 64 << 10
	maxHeaderBytes    = 16 << 10
	readHeaderTimeout = 10 * time.Second
	bodyTimeout       = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 5 * time.Second
	probeTimeout      = time.Second
	// SocketMode is the mode of the socket file: owner and group may connect.
	SocketMode = 0o660
	// maxSocketPath is the room in sockaddr_un.sun_path, less the NUL.
	maxSocketPath = 107
	// MaxEventStreams is how many GET /v1/events streams may be open at
	// once, and MaxEventStreamsPerUID how many of them one peer uid may
	// hold (root included), so no client can exhaust them for the others.
	// A stream over either limit is answered 503.
	MaxEventStreams       = 64
	MaxEventStreamsPerUID = 16
)

// Server serves the control API on a unix socket. It is safe for concurrent
// use; Close stops it.
type Server struct {
	path    string
	backend Backend
	log     *slog.Logger
	euid    int
	gid     int    // socket group, -1 when none
	group   string // socket group as configured, for messages

	ln       *net.UnixListener
	srv      *http.Server
	dev, ino uint64 // identity of our socket file, so Close removes only ours
	cancel   context.CancelFunc
	done     chan struct{} // closed when Serve has returned

	closeOnce sync.Once
	closeErr  error

	streamsMu sync.Mutex
	streams   map[uint32]int // open event streams per peer uid; guarded by streamsMu
	nstreams  int            // their sum; guarded by streamsMu
}

// Listen creates the socket at path and serves backend on it until Close.
//
// The parent directory is created (0755) when missing and must not be a
// symlink. An existing path must be a socket: a symlink or any other file is
// an error (nothing is deleted), a socket nobody answers on is a stale one
// and is removed, a socket something answers on is an error wrapping
// ErrSocketInUse. The socket is made mode 0660 and, when group is set (a
// group name or a numeric gid), owned by that group.
//
// A connection is served only if its peer (SO_PEERCRED) is root, has hbd's
// effective uid, or is a member of group (primary or supplementary);
// everything else is answered 403. logger may be nil.
func Listen(path, group string, backend Backend, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if backend == nil {
		return nil, errors.New("api: listen: nil backend")
	}
	if path == "" {
		return nil, errors.New("api: listen: empty socket path")
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("api: listen %s: socket path is %d bytes, the limit is %d", path, len(path), maxSocketPath)
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return nil, err
	}
	if err := prepareDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := clearStale(path, logger); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // Close removes the file only if it is still ours
	dev, ino, err := secureSocket(path, gid)
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		path: path, backend: backend, log: logger, euid: os.Geteuid(), gid: gid, group: group,
		ln: ln, dev: dev, ino: ino, cancel: cancel, done: make(chan struct{}),
	}
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, readPeer(c, gid >= 0))
		},
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("api: serve failed", "socket", path, "err", err)
		}
	}()
	logger.Info("api: listening", "socket", path, "group", group)
	return s, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// Close stops accepting, ends event streams, waits a few seconds for requests
// in flight, then removes the socket file if it is still the one Listen made.
// It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
		}
		<-s.done
		var st unix.Stat_t
		if err := unix.Lstat(s.path, &st); err == nil && st.Dev == s.dev && st.Ino == s.ino {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.closeErr = fmt.Errorf("api: close: %w", err)
			}
		}
	})
	return s.closeErr
}

func lookupGroup(group string) (int, error) {
	if group == "" {
		return -1, nil
	}
	if g, err := user.LookupGroup(group); err == nil {
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return -1, fmt.Errorf("api: socket group %q: gid %q: %w", group, g.Gid, err)
		}
		return gid, nil
	}
	if gid, err := strconv.Atoi(group); err == nil && gid >= 0 {
		return gid, nil
	}
	return -1, fmt.Errorf("api: socket group %q: no such group", group)
}

// prepareDir makes sure dir exists as a real directory.
func prepareDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("api: create socket directory: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("api: socket directory: %w", err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("api: socket directory %s: is a symlink", dir)
	case !fi.IsDir():
		return fmt.Errorf("api: socket directory %s: not a directory", dir)
	}
	return nil
}

// clearStale removes a stale socket at path and refuses anything else there.
func clearStale(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api: socket %s: %w", path, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("api: socket %s: is a symlink; not touching it", path)
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("api: socket %s: exists and is not a socket (%s); not touching it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		probe := NewClient(path)
		defer probe.Close()
		if h, herr := probe.Health(ctx); herr == nil || h.PID != 0 {
			return fmt.Errorf("api: %w: another hbd (pid %d) is listening on %s", ErrSocketInUse, h.PID, path)
		}
		return fmt.Errorf("api: %w: another process is listening on %s", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("api: socket %s: probing for a live server: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("api: remove stale socket: %w", err)
	}
	log.Info("api: removed stale socket", "socket", path)
	return nil
}

// secureSocket sets the group and mode of the socket file we just bound,
// through an O_PATH descriptor so a file swapped in at path meanwhile is
// never changed. It returns the file's identity.
func secureSocket(path string, gid int) (dev, ino uint64, err error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("api: open socket %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, fmt.Errorf("api: stat socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, 0, fmt.Errorf("api: socket %s: replaced by another file while listening", path)
	}
	if gid >= 0 {
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return 0, 0, fmt.Errorf("api: chown socket %s to group %d: %w", path, gid, err)
		}
	}
	// chmod through the descriptor's /proc entry: fchmod does not work on O_PATH.
	if err := unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), SocketMode, 0); err != nil {
		return 0, 0, fmt.Errorf("api: chmod socket %s: %w", path, err)
	}
	return uint64(st.Dev), st.Ino, nil
}

// handler is the whole HTTP side: peer check, body limit, routes.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	type route struct {
		method, path string
		h            http.HandlerFunc
	}
	routes := []route{
		{"GET", "/v1/services", s.list},
		{"GET", "/v1/services/{name}", s.get},
		{"POST", "/v1/services/{name}/start", s.one("start", s.backend.Start)},
		{"POST", "/v1/services/{name}/stop", s.one("stop", s.backend.Stop)},
		{"POST", "/v1/services/{name}/restart", s.one("restart", s.backend.Restart)},
		{"POST", "/v1/services/{name}/signal", s.signal},
		{"POST", "/v1/start", s.many("start", s.backend.Start)},
		{"POST", "/v1/stop", s.many("stop", s.backend.Stop)},
		{"POST", "/v1/restart", s.many("restart", s.backend.Restart)},
		{"POST", "/v1/reload", s.reload},
		{"POST", "/v1/reexec", s.reexec},
		{"GET", "/v1/events", s.events},
		{"GET", "/v1/health", s.health},
		{"GET", "/metrics", s.metrics},
	}
	for _, rt := range routes {
		mux.HandleFunc(rt.method+" "+rt.path, rt.h)
		allow := rt.method
		if allow == "GET" {
			allow = "GET, HEAD"
		}
		mux.HandleFunc(rt.path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, rt.method), nil)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such route: %s %s (see GET /v1/services)", r.Method, r.URL.Path), nil)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := peerFrom(r.Context())
		if err := p.allowed(s.euid, s.gid); err != nil {
			s.log.Warn("api: request refused", "peer_uid", p.uid, "peer_pid", p.pid, "method", r.Method, "path", r.URL.Path, "err", err)
			writeError(w, http.StatusForbidden, s.forbidden(p), nil)
			return
		}
		if r.ContentLength > MaxBodyBytes {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is %d bytes, the limit is %d", r.ContentLength, MaxBodyBytes), nil)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			s.log.Info("api: request", "method", r.Method, "path", r.URL.Path, "peer_uid", p.uid, "peer_pid", p.pid)
		} else {
			s.log.Debug("api: request", "method", r.Method, "path", r.URL.Path, "peer_uid", p.uid, "peer_pid", p.pid)
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) forbidden(p peer) string {
	if p.err != nil {
		return "permission denied: cannot identify the connecting process: " + p.err.Error()
	}
	who := fmt.Sprintf("permission denied: uid %d (pid %d) may not use hbd's control socket; allowed: root", p.uid, p.pid)
	if s.euid != 0 {
		who += fmt.Sprintf(", uid %d", s.euid)
	}
	if s.gid >= 0 {
		return fmt.Sprintf("%s, members of group %s (gid %d)", who, s.group, s.gid)
	}
	return who + " (set a socket group in hbd's configuration to let a group in)"
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	sts := s.backend.List()
	now := time.Now()
	for i := range sts {
		fillUptime(&sts[i], now)
	}
	if sts == nil {
		sts = []ServiceStatus{}
	}
	writeJSON(w, http.StatusOK, sts)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	st, err := s.backend.Get(r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	fillUptime(&st, time.Now())
	writeJSON(w, http.StatusOK, st)
}

// one serves POST /v1/services/{name}/ACTION: the body, if any, is ignored;
// the answer is the service's status afterwards.
func (s *Server) one(action string, op func([]string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := readBody(w, r, nil, false); err != nil {
			s.fail(w, r, err)
			return
		}
		name := r.PathValue("name")
		if err := op([]string{name}); err != nil {
			s.fail(w, r, fmt.Errorf("%s: %w", action, err))
			return
		}
		s.get(w, r)
	}
}

// Selection is the body of POST /v1/start, /v1/stop and /v1/restart: either
// names or all.
type Selection struct {
	Names []string `json:"names,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// many serves POST /v1/ACTION with a Selection; the answer is the status of
// each selected service afterwards, in the order acted on.
func (s *Server) many(action string, op func([]string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var sel Selection
		if err := readBody(w, r, &sel, true); err != nil {
			s.fail(w, r, err)
			return
		}
		names, err := s.selected(sel, action == "stop")
		if err != nil {
			s.fail(w, r, err)
			return
		}
		var opErr error
		if len(names) > 0 {
			opErr = op(names)
		}
		failed := serviceErrors(opErr)
		now := time.Now()
		out := make([]ServiceStatus, 0, len(names))
		for _, n := range names {
			if st, err := s.backend.Get(n); err == nil {
				fillUptime(&st, now)
				if e, ok := failed[n]; ok {
					st.Error = e
				}
				out = append(out, st)
			}
		}
		if opErr != nil {
			if len(failed) == 0 || len(out) == 0 {
				s.fail(w, r, fmt.Errorf("%s: %w", action, opErr))
				return
			}
			// One line per service, the failed ones with their error.
			status := StatusOf(opErr)
			msg := fmt.Sprintf("%s failed for %d of %d services", action, len(failed), len(out))
			if len(out) == 1 {
				msg = action + ": " + out[0].Error
			}
			s.log.Debug("api: action failed", "action", action, "status", status, "err", opErr)
			writeJSON(w, status, Error{Error: msg, Details: errorLines(opErr), Services: out})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// serviceErrors maps each *ServiceError in err (an errors.Join of them, or
// one, possibly wrapped) to its text, by service name.
func serviceErrors(err error) map[string]string {
	out := map[string]string{}
	var walk func(error)
	walk = func(e error) {
		if se, ok := e.(*ServiceError); ok {
			out[se.Name] = se.Err.Error()
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, m := range j.Unwrap() {
				walk(m)
			}
			return
		}
		if u := errors.Unwrap(e); u != nil {
			walk(u)
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

func (s *Server) selected(sel Selection, reverse bool) ([]string, error) {
	switch {
	case sel.All && len(sel.Names) > 0:
		return nil, fmt.Errorf(`%w: give "names" or "all", not both`, ErrBadRequest)
	case sel.All:
		names := slices.Clone(s.backend.Names())
		if reverse {
			slices.Reverse(names)
		}
		return names, nil
	case len(sel.Names) == 0:
		return nil, fmt.Errorf(`%w: no services selected: give "names":[...] or "all":true`, ErrBadRequest)
	}
	for _, n := range sel.Names {
		if n == "" {
			return nil, fmt.Errorf("%w: empty service name", ErrBadRequest)
		}
	}
	given := sel.Names
	if e, ok := s.backend.(Expander); ok {
		given = e.Expand(given)
	}
	names := make([]string, 0, len(given))
	for _, n := range given {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names, nil
}

// SignalRequest is the body of POST /v1/services/{name}/signal. Signal is a
// name ("HUP", "SIGHUP") or a number, as a JSON string or number.
type SignalRequest struct {
	Signal json.RawMessage `json:"signal"`
}

func (s *Server) signal(w http.ResponseWriter, r *http.Request) {
	var req SignalRequest
	if err := readBody(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	raw := strings.TrimSpace(string(req.Signal))
	if raw == "" || raw == "null" {
		s.fail(w, r, fmt.Errorf(`%w: missing "signal", e.g. {"signal":"HUP"}`, ErrBadRequest))
		return
	}
	if strings.HasPrefix(raw, `"`) {
		var str string
		if err := json.Unmarshal(req.Signal, &str); err != nil {
			s.fail(w, r, fmt.Errorf("%w: signal: %v", ErrBadRequest, err))
			return
		}
		raw = str
	}
	sig, err := ParseSignal(raw)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.backend.Signal(r.PathValue("name"), sig); err != nil {
		s.fail(w, r, fmt.Errorf("signal %s: %w", SignalName(sig), err))
		return
	}
	s.get(w, r)
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if err := readBody(w, r, nil, false); err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.backend.Reload()
	if err != nil {
		s.fail(w, r, fmt.Errorf("reload: %w", err))
		return
	}
	for _, l := range []*[]string{&res.Added, &res.Removed, &res.Changed} {
		if *l == nil {
			*l = []string{}
		}
	}
	writeJSON(w, http.StatusOK, res)
}

// events streams newline-delimited Event JSON. The subscription is made
// before the response header is sent, so a client that has the header sees
// every event from then on.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	uid := peerFrom(r.Context()).uid
	if err := s.openStream(uid); err != nil {
		s.log.Warn("api: event stream refused", "peer_uid", uid, "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error(), nil)
		return
	}
	defer s.closeStream(uid)
	ctx := r.Context()
	ch := s.backend.Subscribe(ctx)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	send := func(ev Event) bool { return enc.Encode(ev) == nil && rc.Flush() == nil }
	for {
		select {
		case <-ctx.Done():
			// The client went away, or the server is closing: what was
			// published before that is still delivered (hbd's last exits
			// at shutdown), then the stream ends.
			for {
				select {
				case ev, ok := <-ch:
					if !ok || !send(ev) {
						return
					}
				default:
					return
				}
			}
		case ev, ok := <-ch:
			if !ok || !send(ev) {
				return
			}
		}
	}
}

// openStream counts an event stream for uid, or says which limit it is over.
func (s *Server) openStream(uid uint32) error {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streams == nil {
		s.streams = map[uint32]int{}
	}
	switch {
	case s.streams[uid] >= MaxEventStreamsPerUID:
		return fmt.Errorf("too many event streams: uid %d already holds %d (the limit per uid); close one (each hbctl events or wait holds one)", uid, s.streams[uid])
	case s.nstreams >= MaxEventStreams:
		return fmt.Errorf("too many event streams: %d are open (the limit); close one (each hbctl events or wait holds one)", s.nstreams)
	}
	s.streams[uid]++
	s.nstreams++
	return nil
}

func (s *Server) closeStream(uid uint32) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streams[uid]--; s.streams[uid] == 0 {
		delete(s.streams, uid)
	}
	s.nstreams--
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := Health{OK: true, PID: os.Getpid(), Version: BuildVersion(), Started: started}
	if pi, ok := s.backend.(PluginInfoer); ok {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		info, err := pi.PluginInfo(ctx)
		if err != nil {
			h.OK, h.Error, h.Attaching = false, "plugin: "+err.Error(), errors.Is(err, ErrAttaching)
			writeJSON(w, http.StatusServiceUnavailable, h)
			return
		}
		h.Plugin = &info
		if info.ShmProblem != "" {
			h.OK, h.Error = false, "plugin: table: "+info.ShmProblem
		}
	}
	for _, st := range s.backend.List() {
		if st.State == "fatal" {
			h.Fatal = append(h.Fatal, st.Name)
		}
	}
	if len(h.Fatal) > 0 && h.OK {
		h.OK = false
		h.Error = "fatal (hbd gave up on it; hbctl start NAME retries): " + strings.Join(h.Fatal, ", ")
	}
	writeJSON(w, http.StatusOK, h)
}

// metrics serves the Prometheus text format, when the backend writes it.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	MetricsHandler(s.backend).ServeHTTP(w, r)
}

// MetricsHandler serves GET /metrics from backend (a MetricsWriter; 404
// otherwise): the handler of the control socket's route, and of the TCP
// listener of [hbd] metrics_listen, which serves nothing else. The whole
// exposition is made before anything is sent, so a failure is a clean 500.
func MetricsHandler(backend any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mw, ok := backend.(MetricsWriter)
		if !ok {
			writeError(w, http.StatusNotFound, "no metrics here", nil)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		var b strings.Builder
		if err := mw.WriteMetrics(ctx, &b); err != nil {
			writeError(w, http.StatusInternalServerError, "metrics: "+err.Error(), nil)
			return
		}
		w.Header().Set("Content-Type", MetricsContentType)
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		if r.Method != http.MethodHead {
			io.WriteString(w, b.String())
		}
	})
}

// reexec serves POST /v1/reexec: the answer is the health of the hbd that
// is about to re-execute itself (its Started tells the next one apart).
func (s *Server) reexec(w http.ResponseWriter, r *http.Request) {
	if err := readBody(w, r, nil, false); err != nil {
		s.fail(w, r, err)
		return
	}
	re, ok := s.backend.(Reexecer)
	if !ok {
		s.fail(w, r, Errorf(ErrConflict, "this hbd cannot re-execute itself"))
		return
	}
	if err := re.Reexec(); err != nil {
		s.fail(w, r, fmt.Errorf("reexec: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, Health{OK: true, PID: os.Getpid(), Version: BuildVersion(), Started: started})
}

// started is when this process started (Health.Started).
var started = time.Now()

// fail answers err with the status of its sentinel.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusOf(err)
	details := detailsOf(err)
	msg := err.Error()
	if first, _, multi := strings.Cut(msg, "\n"); multi {
		msg = first
		if len(details) > 1 {
			msg = fmt.Sprintf("%s (and %d more)", first, len(details)-1)
		}
	}
	if status >= 500 {
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Debug("api: request rejected", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeError(w, status, msg, details)
}

// StatusOf returns the HTTP status the server answers err with.
func StatusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrInvalidConfig):
		return http.StatusUnprocessableEntity
	}
	return http.StatusInternalServerError
}

// detailsOf returns the lines of a Detailer in err's chain, else the members
// of a top-level errors.Join with more than one member.
func detailsOf(err error) []string {
	var d Detailer
	if errors.As(err, &d) {
		return d.Details()
	}
	for e := err; e != nil; {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			if len(j.Unwrap()) > 1 {
				return errorLines(e)
			}
			return nil
		}
		e = errors.Unwrap(e)
	}
	return nil
}

// readBody decodes the request's JSON body into v (nil: read and discard).
// An empty body is an error only when required.
func readBody(w http.ResponseWriter, r *http.Request, v any, required bool) error {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(bodyTimeout))
	// No deadline while the response is being made: a background read hitting
	// it would cancel the request.
	defer rc.SetReadDeadline(time.Time{})
	if v == nil {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
		}
		return nil
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return fmt.Errorf("request body exceeds %d bytes: %w", MaxBodyBytes, err)
		case errors.Is(err, io.EOF) && !required:
			return nil
		case errors.Is(err, io.EOF):
			return fmt.Errorf("%w: empty request body; want a JSON object", ErrBadRequest)
		}
		return fmt.Errorf("%w: malformed JSON body: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body exceeds %d bytes: %w", MaxBodyBytes, err)
		}
		return fmt.Errorf("%w: malformed JSON body: data after the JSON object", ErrBadRequest)
	}
	return nil
}

func fillUptime(st *ServiceStatus, now time.Time) {
	if st.Uptime != "" || st.Since.IsZero() {
		return
	}
	switch st.State {
	case "starting", "running", "stopping":
		st.Uptime = now.Sub(st.Since).Round(time.Second).String()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(Error{Error: "encoding the response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string, details []string) {
	writeJSON(w, status, Error{Error: msg, Details: details})
}
