package connector

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// recvBufLen is the user buffer for one datagram. Exit events are FrameLen
// bytes; anything longer than this is reported truncated and skipped.
const recvBufLen = 8192

// errTruncated is returned by recv for a datagram longer than recvBufLen.
var errTruncated = errors.New("connector: datagram longer than the receive buffer")

// nlSocket is a proc connector socket subscribed to exit events, read with one
// non-blocking recvfrom per datagram through the runtime poller. Only one
// goroutine may call recv.
type nlSocket struct {
	conn    *netlink.Conn
	rc      syscall.RawConn
	rcvbuf  int // SO_RCVBUF as granted by the kernel
	buf     []byte
	n       int           // result of the last recvfrom
	errno   syscall.Errno // result of the last recvfrom
	from    unix.RawSockaddrNetlink
	fromLen uint32
	readFn  func(fd uintptr) bool // r.doRead, bound once so recv does not allocate
}

// dialProc opens a NETLINK_CONNECTOR socket in the CN_IDX_PROC group, sizes
// its receive buffer (readBuffer as in Options.ReadBuffer) and sends
// LISTEN for eventMask. No ACK is awaited: a socket filtered to exit events
// never receives one. Errors that mean "no proc connector here" wrap
// ErrUnavailable.
func dialProc(readBuffer int, eventMask uint32) (*nlSocket, error) {
	conn, err := netlink.Dial(unix.NETLINK_CONNECTOR, &netlink.Config{Groups: cnIdxProc})
	if err != nil {
		switch {
		case errors.Is(err, unix.EPROTONOSUPPORT):
			return nil, fmt.Errorf("connector: %w: socket(NETLINK_CONNECTOR): kernel built without CONFIG_PROC_CONNECTOR: %w", ErrUnavailable, err)
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			return nil, fmt.Errorf("connector: %w: bind to the proc connector group: not permitted (kernels before 6.6 need CAP_NET_ADMIN): %w", ErrUnavailable, err)
		case errors.Is(err, unix.EAFNOSUPPORT):
			return nil, fmt.Errorf("connector: %w: socket(AF_NETLINK): not supported here: %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("connector: dial NETLINK_CONNECTOR: %w", err)
	}
	s := &nlSocket{conn: conn, buf: make([]byte, recvBufLen)}
	s.readFn = s.doRead
	if s.rc, err = conn.SyscallConn(); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connector: netlink socket: %w", err)
	}
	if readBuffer == 0 {
		readBuffer = DefaultReadBuffer
	}
	if readBuffer > 0 {
		if err := s.setReadBuffer(readBuffer); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	if n, err := conn.ReadBuffer(); err == nil {
		s.rcvbuf = n
	}
	_, err = conn.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.Done},
		Data:   subscribeMessage(procCnMcastListen, eventMask),
	})
	if err != nil {
		_ = conn.Close()
		if errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("connector: %w: subscribe: not in the initial network namespace (the proc connector lives only there): %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("connector: subscribe to exit events: %w", err)
	}
	return s, nil
}

// setReadBuffer asks for n bytes with SO_RCVBUFFORCE (needs CAP_NET_ADMIN),
// falling back to SO_RCVBUF.
func (s *nlSocket) setReadBuffer(n int) error {
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	})
	if err == nil && serr == nil {
		return nil
	}
	if err := s.conn.SetReadBuffer(n); err != nil {
		return fmt.Errorf("connector: set receive buffer to %d bytes: %w", n, err)
	}
	return nil
}

// doRead is the RawConn read callback: one non-blocking recvfrom. MSG_TRUNC
// makes n the datagram's real length. It returns false (wait for
// readability) only on EAGAIN.
func (s *nlSocket) doRead(fd uintptr) bool {
	s.fromLen = unix.SizeofSockaddrNetlink
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd,
		uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)),
		unix.MSG_DONTWAIT|unix.MSG_TRUNC,
		uintptr(unsafe.Pointer(&s.from)), uintptr(unsafe.Pointer(&s.fromLen)))
	s.n, s.errno = int(n), e
	return e != unix.EAGAIN
}

// recv returns the next datagram sent by the kernel, valid until the next
// call. It parks in the runtime poller while nothing is queued. It does not
// allocate unless it returns an error. A recvfrom error comes back as an
// *os.SyscallError (errors.Is(err, unix.ENOBUFS) after an overrun); a closed
// socket or an expired deadline as the poller's error.
func (s *nlSocket) recv() ([]byte, error) {
	for {
		if err := s.rc.Read(s.readFn); err != nil {
			return nil, err
		}
		switch s.errno {
		case 0:
		case unix.EINTR:
			continue
		default:
			return nil, os.NewSyscallError("recvfrom", s.errno)
		}
		if s.from.Pid != 0 {
			continue // not from the kernel
		}
		if s.n > len(s.buf) {
			return nil, errTruncated
		}
		return s.buf[:s.n], nil
	}
}

func (s *nlSocket) close() error { return s.conn.Close() }
