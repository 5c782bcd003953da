package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peer is the credentials of the process at the other end of a connection,
// read once when the connection is accepted.
type peer struct {
	pid      int
	uid, gid uint32
	// groups are the supplementary groups (SO_PEERGROUPS, else /proc/PID/status);
	// read only when a socket group is configured.
	groups []uint32
	err    error // why the credentials could not be read; the request is refused
}

type peerKey struct{}

func peerFrom(ctx context.Context) peer {
	p, ok := ctx.Value(peerKey{}).(peer)
	if !ok {
		return peer{err: errors.New("no peer credentials on this connection")}
	}
	return p
}

// readPeer reads SO_PEERCRED (and, with wantGroups, the supplementary groups)
// of a unix connection.
func readPeer(c net.Conn, wantGroups bool) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{err: fmt.Errorf("connection is a %T, not a unix socket", c)}
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", err)}
	}
	var p peer
	var groupsErr error
	cerr := rc.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			p.err = fmt.Errorf("getsockopt SO_PEERCRED: %w", err)
			return
		}
		p.pid, p.uid, p.gid = int(cred.Pid), cred.Uid, cred.Gid
		if wantGroups {
			p.groups, groupsErr = peerGroups(int(fd))
		}
	})
	if cerr != nil {
		return peer{err: fmt.Errorf("peer credentials: %w", cerr)}
	}
	if p.err == nil && wantGroups && groupsErr != nil {
		// Kernels before 4.13 lack SO_PEERGROUPS: fall back to /proc, which
		// names the process that connected as long as it lives.
		p.groups, groupsErr = procGroups(p.pid)
		if groupsErr != nil {
			p.groups = nil // decided on uid/gid alone
		}
	}
	return p
}

// peerGroups reads SO_PEERGROUPS: the peer's supplementary groups as they
// were when it connected.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
			continue
		case e != 0:
			return nil, fmt.Errorf("getsockopt SO_PEERGROUPS: %w", e)
		}
		return buf[:n/4], nil
	}
}

// procGroups reads the Groups: line of /proc/PID/status.
func procGroups(pid int) ([]uint32, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, f := range strings.Fields(rest) {
			g, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/status: Groups: %q: %w", pid, f, err)
			}
			gs = append(gs, uint32(g))
		}
		return gs, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("/proc/%d/status: no Groups: line", pid)
}

// allowed reports whether p may use the API: root, our own effective uid, or
// a member (primary or supplementary) of the socket group gid (-1: none).
func (p peer) allowed(euid, gid int) error {
	if p.err != nil {
		return p.err
	}
	if p.uid == 0 || int64(p.uid) == int64(euid) {
		return nil
	}
	if gid >= 0 && (int64(p.gid) == int64(gid) || slices.Contains(p.groups, uint32(gid))) {
		return nil
	}
	return errors.New("not allowed")
}
