package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	hbpb "github.com/hbshim/hb/plugin/proto"
	"github.com/hbshim/hb/shm"
)

// stopGrace bounds how long the plugin waits, after answering Shutdown, for
// the host to close its connection before it stops the gRPC server hard.
const stopGrace = 5 * time.Second

// implShutdownTimeout bounds the Shutdown call Serve makes itself when the
// server stopped without one (host used go-plugin's Kill, or SIGTERM).
const implShutdownTimeout = 10 * time.Second

// LogLevelEnv names the environment variable that sets the level of the
// plugin's go-plugin/gRPC log (trace, debug, info, warn, error; default info).
const LogLevelEnv = "HB_PLUGIN_LOG_LEVEL"

// grpcServer adapts a Shim implementation to the generated ShimServer.
type grpcServer struct {
	hbpb.UnimplementedShimServer

	impl Shim

	// specs shares what received Specs have in common.
	specs specStore

	// quit is closed when Shutdown begins: Events streams end and new calls
	// are refused with ErrShutdown.
	quit     chan struct{}
	shutOnce sync.Once
	shutErr  error // impl.Shutdown's result, written inside shutOnce

	mu sync.Mutex
	// gs is the server this adapter is registered on (ShimPlugin.GRPCServer),
	// guarded by mu.
	gs *grpc.Server
	// asked records that stop was called, and graceful how; guarded by mu.
	asked    bool
	graceful bool
	// stopped is closed once the gRPC server has stopped after stop.
	stopped chan struct{}
}

func newGRPCServer(impl Shim) *grpcServer {
	return &grpcServer{
		impl:    impl,
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
}

// setServer records the gRPC server; a stop asked for earlier starts now.
func (s *grpcServer) setServer(gs *grpc.Server) {
	s.mu.Lock()
	s.gs = gs
	asked := s.asked
	s.mu.Unlock()
	if asked {
		go s.runStop(gs)
	}
}

// started reports whether the gRPC server was set up.
func (s *grpcServer) started() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gs != nil
}

// refuse returns ErrShutdown once Shutdown has begun.
func (s *grpcServer) refuse(method string) error {
	select {
	case <-s.quit:
		return toStatus(fmt.Errorf("plugin: %s: %w", method, ErrShutdown))
	default:
		return nil
	}
}

// shutdown calls impl.Shutdown exactly once; later calls return its result.
func (s *grpcServer) shutdown(ctx context.Context, clean bool) error {
	s.shutOnce.Do(func() {
		close(s.quit)
		s.shutErr = s.impl.Shutdown(ctx, clean)
	})
	return s.shutErr
}

// stop stops the gRPC server in the background (once). graceful waits (at
// most stopGrace) for a reply in flight to reach the host.
func (s *grpcServer) stop(graceful bool) {
	s.mu.Lock()
	if s.asked {
		s.mu.Unlock()
		return
	}
	s.asked = true
	s.graceful = graceful
	gs := s.gs
	s.mu.Unlock()
	if gs != nil {
		go s.runStop(gs)
	}
}

// runStop stops gs. Gracefully, the Shutdown reply is flushed and the host's
// connection drains (the host closes it once it has the reply); it is
// stopped hard after stopGrace if the host keeps the connection open.
func (s *grpcServer) runStop(gs *grpc.Server) {
	defer close(s.stopped)
	s.mu.Lock()
	graceful := s.graceful
	s.mu.Unlock()
	if !graceful {
		gs.Stop()
		return
	}
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		gs.Stop()
		<-done
	}
}

func (s *grpcServer) stopRequested() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked
}

func (s *grpcServer) Info(ctx context.Context, _ *hbpb.InfoRequest) (*hbpb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return infoToProto(info), nil
}

func (s *grpcServer) Spawn(ctx context.Context, req *hbpb.SpawnRequest) (*hbpb.SpawnResponse, error) {
	if err := s.refuse("Spawn"); err != nil {
		return nil, err
	}
	if req.GetSpec() == nil {
		return nil, toStatus(fmt.Errorf("plugin: Spawn: %w: no spec", ErrBadSpec))
	}
	spec := specFromProto(req.GetSpec())
	s.specs.share(&spec)
	res, err := s.impl.Spawn(ctx, spec)
	if err != nil {
		return nil, toStatus(err)
	}
	return spawnResultToProto(res), nil
}

func (s *grpcServer) SpawnMany(ctx context.Context, req *hbpb.SpawnManyRequest) (*hbpb.SpawnManyResponse, error) {
	if err := s.refuse("SpawnMany"); err != nil {
		return nil, err
	}
	specs := make([]Spec, len(req.GetSpecs()))
	for i, p := range req.GetSpecs() {
		if p == nil {
			return nil, toStatus(fmt.Errorf("plugin: SpawnMany: %w: spec %d is empty", ErrBadSpec, i))
		}
		specs[i] = specFromProto(p)
		s.specs.share(&specs[i])
	}
	var outs []SpawnOutcome
	if m, ok := s.impl.(ManySpawner); ok {
		var err error
		if outs, err = m.SpawnMany(ctx, specs); err != nil {
			return nil, toStatus(err)
		}
	} else {
		outs = make([]SpawnOutcome, len(specs))
		for i, spec := range specs {
			outs[i].Result, outs[i].Err = s.impl.Spawn(ctx, spec)
		}
	}
	resp := &hbpb.SpawnManyResponse{Outcomes: make([]*hbpb.SpawnOutcome, len(outs))}
	for i, o := range outs {
		if o.Err != nil {
			code, msg, reason := outcomeFromError(o.Err)
			resp.Outcomes[i] = &hbpb.SpawnOutcome{ErrorCode: code, Error: msg, ErrorReason: reason}
			continue
		}
		resp.Outcomes[i] = &hbpb.SpawnOutcome{Result: spawnResultToProto(o.Result)}
	}
	return resp, nil
}

func (s *grpcServer) Stop(ctx context.Context, req *hbpb.StopRequest) (*hbpb.StopResponse, error) {
	if err := s.refuse("Stop"); err != nil {
		return nil, err
	}
	err := s.impl.Stop(ctx, req.GetName(), syscall.Signal(req.GetSignal()), time.Duration(req.GetTimeoutNs()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.StopResponse{}, nil
}

func (s *grpcServer) Signal(ctx context.Context, req *hbpb.SignalRequest) (*hbpb.SignalResponse, error) {
	if err := s.refuse("Signal"); err != nil {
		return nil, err
	}
	if err := s.impl.Signal(ctx, req.GetName(), syscall.Signal(req.GetSignal())); err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.SignalResponse{}, nil
}

func (s *grpcServer) SetState(ctx context.Context, req *hbpb.SetStateRequest) (*hbpb.SetStateResponse, error) {
	if err := s.refuse("SetState"); err != nil {
		return nil, err
	}
	if err := s.impl.SetState(ctx, req.GetName(), shm.State(req.GetState()), req.GetGeneration()); err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.SetStateResponse{}, nil
}

func (s *grpcServer) Free(ctx context.Context, req *hbpb.FreeRequest) (*hbpb.FreeResponse, error) {
	if err := s.refuse("Free"); err != nil {
		return nil, err
	}
	if err := s.impl.Free(ctx, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.FreeResponse{}, nil
}

func (s *grpcServer) Bridge(ctx context.Context, req *hbpb.BridgeRequest) (*hbpb.BridgeResponse, error) {
	if err := s.refuse("Bridge"); err != nil {
		return nil, err
	}
	if err := s.impl.Bridge(ctx, bridgeFromProto(req.GetPrograms()), req.GetReserved()); err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.BridgeResponse{}, nil
}

func (s *grpcServer) Bridged(ctx context.Context, _ *hbpb.BridgedRequest) (*hbpb.BridgedResponse, error) {
	specs, err := s.impl.Bridged(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.BridgedResponse{Programs: bridgeToProto(specs)}, nil
}

func (s *grpcServer) List(ctx context.Context, _ *hbpb.ListRequest) (*hbpb.ListResponse, error) {
	slots, err := s.impl.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &hbpb.ListResponse{Slots: make([]*hbpb.Slot, len(slots))}
	for i, sl := range slots {
		resp.Slots[i] = slotToProto(sl)
	}
	return resp, nil
}

// Events subscribes to the implementation, tells the client the
// subscription exists (response header), then forwards events until the
// channel closes, the client goes away or Shutdown begins.
func (s *grpcServer) Events(req *hbpb.EventsRequest, stream hbpb.Shim_EventsServer) error {
	if err := s.refuse("Events"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	ch, err := s.impl.Events(ctx, req.GetAfterSeq())
	if err != nil {
		return toStatus(err)
	}
	if err := stream.SendHeader(metadata.Pairs(eventsHeader, "1")); err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return nil
			}
			if err := stream.Send(eventToProto(ev)); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// Shutdown shuts the implementation down, answers, then stops the server;
// Serve returns once it has stopped.
func (s *grpcServer) Shutdown(ctx context.Context, req *hbpb.ShutdownRequest) (*hbpb.ShutdownResponse, error) {
	err := s.shutdown(ctx, req.GetClean())
	s.stop(true)
	if err != nil {
		return nil, toStatus(err)
	}
	return &hbpb.ShutdownResponse{}, nil
}

// keptStdio holds the process's original stdout and stderr files: go-plugin
// replaces the os.Stdout/os.Stderr variables, and an unreferenced *os.File
// would be finalized and its descriptor (1 or 2) closed and later reused.
var keptStdio []*os.File //nolint:unused // only written: being reachable is its purpose

// Serve runs the plugin side: it serves impl to the hbd that started this
// process and returns after the gRPC server has stopped (a Shutdown call,
// the host's go-plugin Kill, or SIGTERM), having called impl.Shutdown exactly
// once (with clean=false when the host did not ask). The caller then exits.
//
// Serve must be called before anything writes to stdout: go-plugin's
// handshake line goes there. go-plugin's and gRPC's log goes through log
// (the plugin's own logger, so one format and one set of keys), or, when
// log is nil, to logOutput as slog JSON at the level of HB_PLUGIN_LOG_LEVEL
// (default info). If logOutput is an *os.File, descriptor 2 is pointed at it too, so the standard log package,
// gRPC's logger and Go runtime crash reports land in the plugin's log instead
// of the pipe to hbd. SIGPIPE is caught, so a write to a pipe whose reader
// (a dead hbd) is gone fails with EPIPE instead of killing the plugin: the
// plugin outlives its host.
//
// Serve returns an error without serving when the process was not started by
// hbd (the handshake cookie is missing), and impl.Shutdown's error otherwise.
func Serve(impl Shim, logOutput io.Writer, log *slog.Logger) error {
	if impl == nil {
		return errors.New("plugin: Serve: nil Shim")
	}
	if os.Getenv(Handshake.MagicCookieKey) != Handshake.MagicCookieValue {
		return fmt.Errorf("plugin: %s is not set: this command is started by hbd, not by hand", Handshake.MagicCookieKey)
	}
	if logOutput == nil {
		logOutput = io.Discard
	}

	// Catching SIGPIPE (rather than ignoring it) keeps the default
	// disposition for the services this process execs. It stays caught
	// after Serve returns, while the caller winds down.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)

	keptStdio = []*os.File{os.Stdout, os.Stderr}
	if f, ok := logOutput.(*os.File); ok {
		if err := unix.Dup3(int(f.Fd()), 2, 0); err != nil {
			return fmt.Errorf("plugin: point stderr at the log %s: %w", f.Name(), err)
		}
	}

	if log == nil {
		var lv slog.Level
		_ = lv.UnmarshalText([]byte(strings.TrimSpace(os.Getenv(LogLevelEnv))))
		log = slog.New(slog.NewJSONHandler(logOutput, &slog.HandlerOptions{Level: lv}))
	}
	logger := HCLogger(log, hclog.Trace).Named("go-plugin")

	srv := newGRPCServer(impl)

	// SIGTERM: shut down like a Shutdown(clean=false) call.
	sigterm := make(chan os.Signal, 1)
	signal.Notify(sigterm, syscall.SIGTERM)
	defer signal.Stop(sigterm)
	served := make(chan struct{})
	defer close(served)
	go func() {
		select {
		case <-sigterm:
			logger.Info("SIGTERM: shutting down")
			ctx, cancel := context.WithTimeout(context.Background(), implShutdownTimeout)
			defer cancel()
			if err := srv.shutdown(ctx, false); err != nil {
				logger.Error("shutdown", "error", err)
			}
			srv.stop(false) // no reply to deliver
		case <-served:
		}
	}()

	// go-plugin creates the listener itself, then builds the gRPC server
	// (GRPCServer below), then serves: the socket is born 0600 under
	// socketUmask, and the process umask (which the services inherit) is
	// restored before anything is served.
	gate := newHostGate(logger)
	oldUmask := unix.Umask(socketUmask)
	var restoreOnce sync.Once
	restore := func() { restoreOnce.Do(func() { unix.Umask(oldUmask) }) }
	defer restore()
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         pluginSet(impl, srv),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			restore()
			return grpc.NewServer(append(opts, gate.serverOptions()...)...)
		},
		Logger: logger,
	})

	// goplugin.Serve returns as soon as the listener closes; a graceful
	// stop may still be flushing the Shutdown reply.
	started := srv.started()
	if started && srv.stopRequested() {
		<-srv.stopped
	}
	ctx, cancel := context.WithTimeout(context.Background(), implShutdownTimeout)
	defer cancel()
	err := srv.shutdown(ctx, false)
	if !started {
		return errors.Join(errors.New("plugin: the gRPC server did not start (see the plugin log)"), err)
	}
	if err != nil {
		return fmt.Errorf("plugin: shutdown: %w", err)
	}
	logger.Info("plugin stopped")
	return nil
}
