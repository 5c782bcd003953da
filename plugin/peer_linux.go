package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	hclog "github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// socketUmask is the umask under which go-plugin creates the plugin's
// socket: bind(2) makes it 0600 from the start, so there is no moment at
// which another user may connect.
const socketUmask = 0o177

// hostGate decides who the plugin serves. At the socket, only processes
// running as the plugin's euid (hbd re-executes itself, so hbd's uid) get a
// connection (peerCreds); every other connection is closed and logged. At
// the RPC, only one host process is served at a time (the interceptors):
// while a process holds connections and lives, calls from any other
// process fail with ErrHostConnected. A restarted hbd takes over as soon as
// the previous one has exited or closed its connections.
type hostGate struct {
	euid uint32
	log  hclog.Logger

	mu sync.Mutex
	// holder is the PID of the host served, 0 for none; holderFD its
	// pidfd (-1 if it could not be opened), so that a recycled PID is not
	// taken for the holder still alive. Guarded by mu.
	holder   int
	holderFD int
	// conns counts the open connections of each peer PID; guarded by mu.
	conns map[int]int
}

func newHostGate(log hclog.Logger) *hostGate {
	return &hostGate{euid: uint32(unix.Geteuid()), log: log, holderFD: -1, conns: map[int]int{}}
}

// serverOptions are the gRPC server options that put the gate in front of
// every service on the server (the Shim, and go-plugin's health, broker,
// stdio and controller services).
func (g *hostGate) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(peerCreds{g}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := g.admit(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := g.admit(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// hostInfo is the AuthInfo of an accepted connection: its peer's
// credentials as SO_PEERCRED gave them at accept.
type hostInfo struct {
	credentials.CommonAuthInfo
	pid int
	uid uint32
}

func (hostInfo) AuthType() string { return "peercred" }

// admit lets the call through if its connection's process is the host
// served, or becomes it.
func (g *hostGate) admit(ctx context.Context, method string) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return toStatus(fmt.Errorf("plugin: %s: %w: no peer on the call", method, ErrHostConnected))
	}
	hi, ok := p.AuthInfo.(hostInfo)
	if !ok {
		return toStatus(fmt.Errorf("plugin: %s: %w: no peer credentials on the call", method, ErrHostConnected))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holder == hi.pid {
		return nil
	}
	if g.holder != 0 && g.conns[g.holder] > 0 && !(g.holderFD >= 0 && pidfdExited(g.holderFD)) {
		g.log.Warn("refused a second host: another hbd is connected", "pid", hi.pid, "uid", hi.uid, "host_pid", g.holder, "method", method)
		return toStatus(fmt.Errorf("plugin: %s: %w (hbd pid %d); refusing pid %d", method, ErrHostConnected, g.holder, hi.pid))
	}
	if g.holderFD >= 0 {
		_ = unix.Close(g.holderFD)
	}
	prev := g.holder
	g.holder = hi.pid
	g.holderFD, _ = unix.PidfdOpen(hi.pid, 0)
	if prev != 0 {
		g.log.Info("serving a new host", "pid", hi.pid, "previous", prev)
	}
	return nil
}

// accepted vets a new connection's peer and counts it.
func (g *hostGate) accepted(raw net.Conn) (net.Conn, hostInfo, error) {
	uc, ok := raw.(*net.UnixConn)
	if !ok {
		return nil, hostInfo{}, fmt.Errorf("connection is a %T, not a unix socket", raw)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, hostInfo{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, hostInfo{}, err
	}
	if cerr != nil {
		g.log.Warn("refused a connection to the plugin socket: no peer credentials", "error", cerr)
		return nil, hostInfo{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	if cred.Uid != g.euid {
		g.log.Warn("refused a connection to the plugin socket: not hbd's user", "pid", cred.Pid, "uid", cred.Uid, "want_uid", g.euid)
		return nil, hostInfo{}, fmt.Errorf("peer pid %d uid %d is not the plugin's uid %d", cred.Pid, cred.Uid, g.euid)
	}
	pid := int(cred.Pid)
	g.mu.Lock()
	g.conns[pid]++
	g.mu.Unlock()
	return &gatedConn{Conn: raw, g: g, pid: pid}, hostInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		pid:            pid,
		uid:            cred.Uid,
	}, nil
}

func (g *hostGate) closed(pid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns[pid]--; g.conns[pid] <= 0 {
		delete(g.conns, pid)
	}
}

// gatedConn uncounts its connection when gRPC closes it.
type gatedConn struct {
	net.Conn
	g    *hostGate
	pid  int
	once sync.Once
}

func (c *gatedConn) Close() error {
	c.once.Do(func() { c.g.closed(c.pid) })
	return c.Conn.Close()
}

// peerCreds is the gRPC transport "security" of the plugin socket: the
// bytes pass unchanged; the handshake only checks SO_PEERCRED.
type peerCreds struct{ g *hostGate }

func (c peerCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.g.accepted(raw)
	if err != nil {
		return nil, nil, err // gRPC closes raw
	}
	return conn, info, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("plugin: peer credentials are server-side only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c peerCreds) Clone() credentials.TransportCredentials { return c }

func (peerCreds) OverrideServerName(string) error { return nil }
