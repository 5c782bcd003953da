package connector

import (
	"encoding/binary"
	"iter"
)

// Wire constants of the proc connector (include/uapi/linux/connector.h,
// include/uapi/linux/cn_proc.h, include/uapi/linux/netlink.h).
const (
	cnIdxProc = 1 // CN_IDX_PROC: connector id index, and the multicast group bit
	cnValProc = 1 // CN_VAL_PROC

	procCnMcastListen = 1 // PROC_CN_MCAST_LISTEN
	procCnMcastIgnore = 2 // PROC_CN_MCAST_IGNORE

	procEventNone = 0x00000000 // PROC_EVENT_NONE: what an ACK carries
	procEventFork = 0x00000001 // PROC_EVENT_FORK
	procEventExit = 0x80000000 // PROC_EVENT_EXIT

	nlmsgDone = 3 // NLMSG_DONE: the type the kernel gives every connector message
)

// Sizes and byte offsets inside one received datagram: nlmsghdr (16 bytes),
// then cn_msg (20), then proc_event (16-byte header + 24-byte union). The
// kernel aligns proc_event in its own buffer, not in the datagram, so the
// 64-bit timestamp sits at a 4-byte boundary here: fields are read with
// binary.NativeEndian, never through an unsafe cast.
const (
	nlmsgHdrLen  = 16
	cnMsgLen     = 20
	procEventLen = 40 // sizeof(struct proc_event)

	// FrameLen is the length of one exit-event datagram as the kernel sends
	// it: nlmsghdr + cn_msg + proc_event.
	FrameLen = nlmsgHdrLen + cnMsgLen + procEventLen

	offNlLen   = 0  // nlmsghdr.nlmsg_len   u32
	offNlType  = 4  // nlmsghdr.nlmsg_type  u16
	offCnIdx   = 16 // cn_msg.id.idx        u32
	offCnVal   = 20 // cn_msg.id.val        u32
	offCnLen   = 32 // cn_msg.len           u16 (payload length)
	offWhat    = 36 // proc_event.what      u32
	offCPU     = 40 // proc_event.cpu       u32
	offTime    = 44 // proc_event.timestamp_ns u64 (4-byte aligned here)
	offExitPID = 52 // exit.process_pid     u32 (thread id)
	offExitTG  = 56 // exit.process_tgid    u32 (process id)
	offExitWS  = 60 // exit.exit_code       u32 (wait(2) status)
	offExitSig = 64 // exit.exit_signal     u32 (0xffffffff for a non-leader thread)
	offExitPP  = 68 // exit.parent_pid      u32
	offExitPT  = 72 // exit.parent_tgid     u32
)

// ThreadExitSignal is the ExitSignal of a task created with CLONE_THREAD (a
// non-leader thread): (u32)-1.
const ThreadExitSignal = 0xFFFFFFFF

// Event is one PROC_EVENT_EXIT from the proc connector. The kernel sends one
// per task (thread), not one per process: PID is the thread id, TGID the
// process id. An event with PID == TGID does not mean the process is gone
// (the leader can exit before other threads, or be replaced by an exec in
// another thread); only the process's pidfd turning readable says that.
type Event struct {
	PID        uint32 // thread id of the exiting task (init pid namespace)
	TGID       uint32 // process id (thread group id)
	WaitStatus uint32 // wait(2)-style status of the task; see ExitStatus
	ExitSignal uint32 // signal sent to the parent; ThreadExitSignal for a non-leader thread
	ParentPID  uint32 // real parent's thread id, 0 if unknown
	ParentTGID uint32 // real parent's process id, 0 if unknown
	CPU        uint32 // CPU that emitted the event

	// TimestampNs is when the kernel built the event, in CLOCK_MONOTONIC
	// nanoseconds (ktime_get_ns).
	TimestampNs uint64
}

// Status is ExitStatus(e.WaitStatus).
func (e Event) Status() int { return ExitStatus(e.WaitStatus) }

// Thread reports whether the event is for a non-leader thread.
func (e Event) Thread() bool { return e.ExitSignal == ThreadExitSignal }

// ExitStatus turns a wait(2)-style status into the number a shell shows: the
// exit code (waitStatus>>8 & 0xff) for a normal exit, or 128+signal
// (waitStatus & 0x7f) for a death by signal. The result is always in 0..255.
func ExitStatus(waitStatus uint32) int {
	if sig := waitStatus & 0x7f; sig != 0 {
		return 128 + int(sig)
	}
	return int(waitStatus>>8) & 0xff
}

// DecodeFrame decodes the netlink message at the start of b, which is normally
// one whole datagram read from a proc connector socket (FrameLen bytes for an
// exit event). It reports false, without error, for anything that is not a
// well-formed PROC_EVENT_EXIT: ACKs (what == 0), other event types, other
// message types, other connector ids, and short or inconsistent frames. Bytes
// after the first message are ignored; DecodeFrames walks all of them.
// DecodeFrame never panics and does not allocate.
func DecodeFrame(b []byte) (Event, bool) {
	msg, _, ok := nextMessage(b)
	if !ok {
		return Event{}, false
	}
	return decodeMessage(msg)
}

// DecodeFrames yields the exit event of every netlink message in b, in order,
// skipping the messages DecodeFrame would reject. It stops at the first
// message whose header is inconsistent with the bytes that remain.
func DecodeFrames(b []byte) iter.Seq[Event] {
	return func(yield func(Event) bool) {
		for len(b) > 0 {
			msg, rest, ok := nextMessage(b)
			if !ok {
				return
			}
			b = rest
			if ev, ok := decodeMessage(msg); ok {
				if !yield(ev) {
					return
				}
			}
		}
	}
}

// nextMessage splits the first netlink message off b. msg is exactly
// nlmsg_len bytes; rest starts at the next 4-byte aligned message.
func nextMessage(b []byte) (msg, rest []byte, ok bool) {
	if len(b) < nlmsgHdrLen {
		return nil, nil, false
	}
	n := binary.NativeEndian.Uint32(b[offNlLen:])
	if n < nlmsgHdrLen || uint64(n) > uint64(len(b)) {
		return nil, nil, false
	}
	aligned := (uint64(n) + 3) &^ 3
	if aligned >= uint64(len(b)) {
		return b[:n], nil, true
	}
	return b[:n], b[aligned:], true
}

// decodeMessage decodes one netlink message (exactly nlmsg_len bytes).
func decodeMessage(m []byte) (Event, bool) {
	if len(m) < FrameLen {
		return Event{}, false
	}
	ne := binary.NativeEndian
	if ne.Uint16(m[offNlType:]) != nlmsgDone ||
		ne.Uint32(m[offCnIdx:]) != cnIdxProc ||
		ne.Uint32(m[offCnVal:]) != cnValProc {
		return Event{}, false
	}
	// The connector payload must hold a whole proc_event and fit the message.
	if cl := int(ne.Uint16(m[offCnLen:])); cl < procEventLen || nlmsgHdrLen+cnMsgLen+cl > len(m) {
		return Event{}, false
	}
	if ne.Uint32(m[offWhat:]) != procEventExit {
		return Event{}, false
	}
	return Event{
		PID:         ne.Uint32(m[offExitPID:]),
		TGID:        ne.Uint32(m[offExitTG:]),
		WaitStatus:  ne.Uint32(m[offExitWS:]),
		ExitSignal:  ne.Uint32(m[offExitSig:]),
		ParentPID:   ne.Uint32(m[offExitPP:]),
		ParentTGID:  ne.Uint32(m[offExitPT:]),
		CPU:         ne.Uint32(m[offCPU:]),
		TimestampNs: ne.Uint64(m[offTime:]),
	}, true
}

// subscribeMessage is the netlink payload (cn_msg + proc_input) that asks the
// kernel for the events in eventMask (op procCnMcastListen) or for none (op
// procCnMcastIgnore). The 8-byte proc_input form makes the kernel filter per
// socket before queuing (Linux 6.6+; older kernels read only the op and send
// everything).
func subscribeMessage(op, eventMask uint32) []byte {
	b := make([]byte, cnMsgLen+8)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], cnIdxProc)
	ne.PutUint32(b[4:], cnValProc)
	// seq (8), ack (12) stay 0
	ne.PutUint16(b[16:], 8) // len of proc_input
	// flags (18) stay 0
	ne.PutUint32(b[20:], op)
	ne.PutUint32(b[24:], eventMask)
	return b
}
