package connector

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The exit tracepoint detector.
//
// The kernel tears a process down in do_exit: it unmaps the memory, closes
// the files, leaves the cgroup, and only then (exit_notify) wakes pidfd
// pollers and sends the proc connector's exit event. On small virtual
// machines the teardown alone takes hundreds of microseconds. The
// sched_process_exit tracepoint fires near the start of do_exit, once the
// exiting thread is the last live one of its group (group_dead): from there
// the process cannot run user code again.
//
// A small eBPF program attached to that raw tracepoint looks the exiting
// thread group up in a hash map of watched TGIDs and, on a hit, writes the
// TGID into a ring buffer. The ring buffer's descriptor sits in the
// Watcher's epoll set beside the pidfds, so the epoll goroutine learns of
// the death without any extra thread. The program reads the tracepoint's
// second argument (group_dead, in the kernel since 6.16); where the
// tracepoint has no such argument the verifier rejects the program and the
// detector is reported unavailable. Loading it needs CAP_BPF and
// CAP_PERFMON (root).
//
// The detector carries no exit status: callers reap their children
// (WatchChild), which gives the status, and find the status of the other
// processes they ask it for (WatchTraced) elsewhere (the pidfd's
// PIDFD_INFO_EXIT after their parent's reap), since the connector's event
// comes after the watch has fired. Watch leaves a process out of the map,
// so that the connector gives its status.

// The kill program.
//
// A SIGKILL is final the moment the kernel queues it: from then the process
// never runs user code again, whatever it is doing. But a killed process
// reaches do_exit only once a CPU runs it, which under load (a kill of many,
// a CPU full of other work) is milliseconds later. A second program, on the
// signal_generate raw tracepoint, reports a SIGKILL the kernel delivered to a
// watched process (result TRACE_SIGNAL_DELIVERED: not one ignored, as by an
// init of its namespace, nor one already pending) into the same ring, as a
// record of its own kind. The target is a task_struct; its TGID is read at
// the offset the kernel's BTF gives for task_struct.tgid. Where there is no
// BTF the program is not loaded and kills are seen at the exit, as before.
//
// A kill record does not end the watch: the exit is still reported once,
// by whichever detector sees it. It is told through Options.OnKill, where
// the caller stores the 0 early (docs/design.md#invariant-1).

// eBPF helper function numbers (include/uapi/linux/bpf.h).
const (
	bpfFuncMapLookupElem     = 1
	bpfFuncKtimeGetNs        = 5
	bpfFuncGetCurrentPidTgid = 14
	bpfFuncProbeReadKernel   = 113
	bpfFuncRingbufOutput     = 130
)

// pfExiting is PF_EXITING (include/linux/sched.h): the task is in do_exit.
const pfExiting = 0x4

// Record kinds, in the second word of a record.
const (
	recExit = 0 // sched_process_exit: the last thread of the group exits
	recKill = 1 // signal_generate: a SIGKILL was delivered to the group
)

// traceRingSize is the ring buffer's data size: 24 bytes per record with
// its header, so 2730 records can wait for the epoll goroutine (a killed
// process writes two: its kill and its exit). A full ring drops records; a
// kill dropped is seen at the exit, an exit dropped is reported by the
// pidfds (slower, never lost).
const traceRingSize = 64 << 10

// traceMapSize bounds the watched TGIDs in the map. Beyond it a Watch is
// left to the other detectors.
const traceMapSize = 1 << 16

// exitTrace is the loaded program, its maps, the attachment and the
// consumer's view of the ring buffer.
type exitTrace struct {
	watched  int // hash map fd: TGID (u32) -> 1 (u32)
	ring     int // ring buffer map fd
	prog     int
	link     int   // raw tracepoint fd; closing it detaches the program
	killProg int   // the kill program, -1 when not loaded
	killLink int   // its raw tracepoint fd
	killErr  error // why the kill program is not loaded

	consumerPage []byte // rw: consumer position at offset 0
	dataPages    []byte // ro: producer position at offset 0, data from one page on (mapped twice)
	pageSize     int
	events       atomic.Uint64 // records read
	kills        atomic.Uint64 // of them, kill records
}

// bpfInsn is struct bpf_insn.
type bpfInsn struct {
	code uint8
	regs uint8 // dst in the low nibble, src in the high one
	off  int16
	imm  int32
}

func insn(code uint8, dst, src uint8, off int16, imm int32) bpfInsn {
	return bpfInsn{code: code, regs: dst | src<<4, off: off, imm: imm}
}

// ldMapFd is the two-instruction load of a map's address by descriptor.
func ldMapFd(dst uint8, fd int) []bpfInsn {
	return []bpfInsn{insn(0x18, dst, unix.BPF_PSEUDO_MAP_FD, 0, int32(fd)), {}}
}

// eBPF opcodes the programs use.
const (
	movX  = 0xbf // r_dst = r_src (64 bit)
	movK  = 0xb7 // r_dst = imm
	ldxW  = 0x61 // r_dst = *(u32 *)(r_src + off)
	ldxDW = 0x79 // r_dst = *(u64 *)(r_src + off)
	stxW  = 0x63 // *(u32 *)(r_dst + off) = r_src
	stxDW = 0x7b // *(u64 *)(r_dst + off) = r_src
	addK  = 0x07 // r_dst += imm
	rshK  = 0x77 // r_dst >>= imm
	jeqK  = 0x15 // if r_dst == imm goto pc+off
	jneK  = 0x55 // if r_dst != imm goto pc+off
	andK  = 0x57 // r_dst &= imm
	call  = 0x85
	exit  = 0x95
)

// exitProgram is the eBPF program:
//
//	if (!ctx->group_dead) return 0;
//	u32 tgid = bpf_get_current_pid_tgid() >> 32;
//	if (!bpf_map_lookup_elem(watched, &tgid)) return 0;
//	struct { u64 tgid, ns; } rec = { tgid, bpf_ktime_get_ns() };
//	bpf_ringbuf_output(ring, &rec, 16, 0);
//	return 0;
//
// The time (CLOCK_MONOTONIC) lets the consumer tell the exiting process
// from a later one that reuses its PID (see Watcher.traced).
func exitProgram(watched, ring int) []bpfInsn {
	p := []bpfInsn{
		insn(movX, 6, 1, 0, 0),  // 0: r6 = ctx
		insn(ldxDW, 1, 6, 8, 0), // 1: r1 = ctx->args[1] (group_dead)
		insn(jeqK, 1, 0, 20, 0), // 2: if r1 == 0 goto out (23)
		insn(call, 0, 0, 0, bpfFuncGetCurrentPidTgid),
		insn(rshK, 0, 0, 0, 32),  // 4: r0 >>= 32 (tgid)
		insn(movX, 7, 0, 0, 0),   // 5: r7 = tgid
		insn(stxW, 10, 7, -4, 0), // 6: key at fp-4
	}
	p = append(p, ldMapFd(1, watched)...) // 7-8: r1 = watched
	p = append(p,
		insn(movX, 2, 10, 0, 0), // 9: r2 = fp
		insn(addK, 2, 0, 0, -4), // 10: r2 = &key
		insn(call, 0, 0, 0, bpfFuncMapLookupElem),
		insn(jeqK, 0, 0, 10, 0), // 12: if r0 == 0 goto out (23)
		insn(call, 0, 0, 0, bpfFuncKtimeGetNs),
		insn(stxDW, 10, 0, -8, 0),  // 14: rec.ns at fp-8
		insn(stxDW, 10, 7, -16, 0), // 15: rec.tgid at fp-16
	)
	p = append(p, ldMapFd(1, ring)...) // 16-17: r1 = ring
	p = append(p,
		insn(movX, 2, 10, 0, 0),  // 18: r2 = fp
		insn(addK, 2, 0, 0, -16), // 19: r2 = &rec
		insn(movK, 3, 0, 0, 16),  // 20: r3 = 16
		insn(movK, 4, 0, 0, 0),   // 21: r4 = 0 (wake the consumer if it has caught up)
		insn(call, 0, 0, 0, bpfFuncRingbufOutput),
		insn(movK, 0, 0, 0, 0), // 23 out: r0 = 0
		insn(exit, 0, 0, 0, 0),
	)
	return p
}

// toOut marks a jump to a program's last two instructions (r0 = 0; exit);
// resolveOut patches it.
const toOut = -1 << 15

// resolveOut points every toOut jump of p at p's "out" (its last two
// instructions) and returns p.
func resolveOut(p []bpfInsn) []bpfInsn {
	out := len(p) - 2
	for i := range p {
		if p[i].off == toOut && (p[i].code == jeqK || p[i].code == jneK) {
			p[i].off = int16(out - (i + 1))
		}
	}
	return p
}

// killProgram is the eBPF program on signal_generate(sig, info, task, group,
// result):
//
//	if (sig != SIGKILL || result != TRACE_SIGNAL_DELIVERED) return 0;
//	if (!group) {	// sent to one thread (tgkill, cgroup.kill)
//		u32 flags;
//		if (bpf_probe_read_kernel(&flags, 4, (void *)task + flagsOff)) return 0;
//		if (flags & PF_EXITING) return 0;
//	}
//	u32 tgid;
//	if (bpf_probe_read_kernel(&tgid, 4, (void *)task + tgidOff)) return 0;
//	if (!bpf_map_lookup_elem(watched, &tgid)) return 0;
//	struct { u32 tgid, kind; u64 ns; } rec = { tgid, recKill, bpf_ktime_get_ns() };
//	bpf_ringbuf_output(ring, &rec, 16, 0);
//	return 0;
//
// A SIGKILL sent to one thread that is already exiting is delivered, but the
// kernel then leaves the rest of the process alone (complete_signal finds
// no thread to take it for the group): that one is not a death.
func killProgram(watched, ring, tgidOff, flagsOff int) []bpfInsn {
	const stW = 0x62 // *(u32 *)(r_dst + off) = imm
	p := []bpfInsn{
		insn(movX, 6, 1, 0, 0),  // r6 = ctx
		insn(ldxDW, 1, 6, 0, 0), // r1 = sig
		insn(jneK, 1, 0, toOut, int32(unix.SIGKILL)),
		insn(ldxDW, 1, 6, 32, 0),             // r1 = result
		insn(jneK, 1, 0, toOut, 0),           // not TRACE_SIGNAL_DELIVERED
		insn(ldxDW, 1, 6, 24, 0),             // r1 = group
		insn(jneK, 1, 0, 10, 0),              // to the process: no thread to check
		insn(ldxDW, 3, 6, 16, 0),             // r3 = task
		insn(addK, 3, 0, 0, int32(flagsOff)), // r3 = &task->flags
		insn(movX, 1, 10, 0, 0),
		insn(addK, 1, 0, 0, -8), // r1 = fp-8
		insn(movK, 2, 0, 0, 4),
		insn(call, 0, 0, 0, bpfFuncProbeReadKernel),
		insn(jneK, 0, 0, toOut, 0),
		insn(ldxW, 1, 10, -8, 0), // r1 = flags
		insn(andK, 1, 0, 0, pfExiting),
		insn(jneK, 1, 0, toOut, 0),          // a thread already exiting
		insn(ldxDW, 3, 6, 16, 0),            // r3 = task
		insn(addK, 3, 0, 0, int32(tgidOff)), // r3 = &task->tgid
		insn(movX, 1, 10, 0, 0),             // r1 = fp
		insn(addK, 1, 0, 0, -4),             // r1 = &key
		insn(movK, 2, 0, 0, 4),              // r2 = 4
		insn(call, 0, 0, 0, bpfFuncProbeReadKernel),
		insn(jneK, 0, 0, toOut, 0),
	}
	p = append(p, ldMapFd(1, watched)...)
	p = append(p,
		insn(movX, 2, 10, 0, 0),
		insn(addK, 2, 0, 0, -4), // r2 = &key
		insn(call, 0, 0, 0, bpfFuncMapLookupElem),
		insn(jeqK, 0, 0, toOut, 0),
		insn(ldxW, 7, 10, -4, 0), // r7 = tgid, before rec.ns covers the key
		insn(call, 0, 0, 0, bpfFuncKtimeGetNs),
		insn(stxDW, 10, 0, -8, 0), // rec.ns
		insn(stxW, 10, 7, -16, 0), // rec.tgid
		insn(stW, 10, 0, -12, recKill),
	)
	p = append(p, ldMapFd(1, ring)...)
	p = append(p,
		insn(movX, 2, 10, 0, 0),
		insn(addK, 2, 0, 0, -16), // r2 = &rec
		insn(movK, 3, 0, 0, 16),
		insn(movK, 4, 0, 0, 0),
		insn(call, 0, 0, 0, bpfFuncRingbufOutput),
		insn(movK, 0, 0, 0, 0), // out
		insn(exit, 0, 0, 0, 0),
	)
	return resolveOut(p)
}

func bpfCall(cmd uintptr, attr unsafe.Pointer, size uintptr) (int, error) {
	for tries := 1; ; tries++ {
		r, _, e := unix.Syscall(unix.SYS_BPF, cmd, uintptr(attr), size)
		// The verifier can be interrupted (EAGAIN on program loads).
		if e == unix.EINTR || e == unix.EAGAIN && cmd == unix.BPF_PROG_LOAD && tries < 5 {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

func bpfMapCreate(typ, key, value, max, flags uint32) (int, error) {
	attr := struct{ typ, key, value, max, flags uint32 }{typ, key, value, max, flags}
	return bpfCall(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
}

type bpfElemAttr struct {
	fd    uint32
	_     uint32
	key   uint64
	value uint64
	flags uint64
}

// openExitTrace loads and attaches the program. Every failure wraps
// ErrTraceUnavailable and says which step failed.
func openExitTrace() (_ *exitTrace, err error) {
	t := &exitTrace{watched: -1, ring: -1, prog: -1, link: -1, killProg: -1, killLink: -1, pageSize: os.Getpagesize()}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	fail := func(step string, e error) error {
		if errors.Is(e, unix.EPERM) || errors.Is(e, unix.EACCES) {
			return fmt.Errorf("%w: %s: %v (needs CAP_BPF and CAP_PERFMON)", ErrTraceUnavailable, step, e)
		}
		return fmt.Errorf("%w: %s: %v", ErrTraceUnavailable, step, e)
	}
	if t.watched, err = bpfMapCreate(unix.BPF_MAP_TYPE_HASH, 4, 4, traceMapSize, unix.BPF_F_NO_PREALLOC); err != nil {
		return nil, fail("create the watched-TGID map", err)
	}
	if t.ring, err = bpfMapCreate(unix.BPF_MAP_TYPE_RINGBUF, 0, 0, traceRingSize, 0); err != nil {
		return nil, fail("create the ring buffer", err)
	}
	if t.prog, err = loadRawTP(exitProgram(t.watched, t.ring)); err != nil {
		return nil, fail("load the program (sched_process_exit needs its group_dead argument, Linux 6.16 or later)", err)
	}
	if t.link, err = attachRawTP("sched_process_exit", t.prog); err != nil {
		return nil, fail("attach to raw tracepoint sched_process_exit", err)
	}
	if t.consumerPage, err = unix.Mmap(t.ring, 0, t.pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		t.consumerPage = nil
		return nil, fail("map the ring buffer's consumer page", err)
	}
	if t.dataPages, err = unix.Mmap(t.ring, int64(t.pageSize), t.pageSize+2*traceRingSize, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		t.dataPages = nil
		return nil, fail("map the ring buffer", err)
	}
	t.killErr = t.openKill()
	return t, nil
}

// openKill loads and attaches the kill program; an error says why kills are
// seen only at the exit.
func (t *exitTrace) openKill() (err error) {
	offs, err := kernelMemberOffsets("task_struct", "tgid", "flags")
	if err != nil {
		return fmt.Errorf("find task_struct.tgid and .flags: %w", err)
	}
	if t.killProg, err = loadRawTP(killProgram(t.watched, t.ring, offs[0], offs[1])); err != nil {
		return fmt.Errorf("load the kill program: %w", err)
	}
	if t.killLink, err = attachRawTP("signal_generate", t.killProg); err != nil {
		unix.Close(t.killProg)
		t.killProg = -1
		return fmt.Errorf("attach to raw tracepoint signal_generate: %w", err)
	}
	return nil
}

// loadRawTP loads prog as a raw tracepoint program; the error carries the
// verifier's last word.
func loadRawTP(prog []bpfInsn) (int, error) {
	license := []byte("GPL\x00")
	logBuf := make([]byte, 4096)
	load := struct {
		typ, cnt           uint32
		insns, license     uint64
		logLevel, logSize  uint32
		logBuf             uint64
		kernVersion, flags uint32
	}{
		typ: unix.BPF_PROG_TYPE_RAW_TRACEPOINT, cnt: uint32(len(prog)),
		insns:    uint64(uintptr(unsafe.Pointer(&prog[0]))),
		license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
		logLevel: 1, logSize: uint32(len(logBuf)), logBuf: uint64(uintptr(unsafe.Pointer(&logBuf[0]))),
	}
	fd, err := bpfCall(unix.BPF_PROG_LOAD, unsafe.Pointer(&load), unsafe.Sizeof(load))
	runtime.KeepAlive(prog)
	runtime.KeepAlive(license)
	if err != nil {
		if msg := verifierMessage(logBuf); msg != "" {
			err = fmt.Errorf("%v: verifier: %s", err, msg)
		}
		return -1, err
	}
	return fd, nil
}

// attachRawTP attaches prog to the raw tracepoint name; closing the
// returned descriptor detaches it.
func attachRawTP(name string, prog int) (int, error) {
	b := []byte(name + "\x00")
	open := struct {
		name uint64
		prog uint32
		_    uint32
	}{name: uint64(uintptr(unsafe.Pointer(&b[0]))), prog: uint32(prog)}
	fd, err := bpfCall(unix.BPF_RAW_TRACEPOINT_OPEN, unsafe.Pointer(&open), unsafe.Sizeof(open))
	runtime.KeepAlive(b)
	return fd, err
}

// verifierMessage returns the last line of the verifier's log.
func verifierMessage(b []byte) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	s := string(b[:n])
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}

// add puts tgid in the map. It fails with E2BIG when the map is full.
func (t *exitTrace) add(tgid int32) error {
	k, v := uint32(tgid), uint32(1)
	a := bpfElemAttr{fd: uint32(t.watched), key: uint64(uintptr(unsafe.Pointer(&k))), value: uint64(uintptr(unsafe.Pointer(&v)))}
	_, err := bpfCall(unix.BPF_MAP_UPDATE_ELEM, unsafe.Pointer(&a), unsafe.Sizeof(a))
	runtime.KeepAlive(&k)
	runtime.KeepAlive(&v)
	return err
}

// del removes tgid from the map; a missing key is not an error.
func (t *exitTrace) del(tgid int32) {
	k := uint32(tgid)
	a := bpfElemAttr{fd: uint32(t.watched), key: uint64(uintptr(unsafe.Pointer(&k)))}
	_, _ = bpfCall(unix.BPF_MAP_DELETE_ELEM, unsafe.Pointer(&a), unsafe.Sizeof(a))
	runtime.KeepAlive(&k)
}

// drain calls fn with every record in the ring, the TGID, the record's kind
// (recExit, recKill) and the CLOCK_MONOTONIC time of the tracepoint, and
// releases them. It reads nothing the producer has not committed.
//
// Each record is released (the consumer position stored) before the next
// header is read. The producer wakes the reader only when, at its commit,
// the consumer position is that record's: a record found still being
// written, behind records read but not yet released, would be committed
// without a wake-up, and it and every record after it would wait in the
// ring for some other wake-up of the reader.
func (t *exitTrace) drain(fn func(tgid int32, kind uint32, ns uint64)) {
	cons := (*uint64)(unsafe.Pointer(&t.consumerPage[0]))
	prod := (*uint64)(unsafe.Pointer(&t.dataPages[0]))
	data := t.dataPages[t.pageSize:]
	const mask = traceRingSize - 1
	c := atomic.LoadUint64(cons)
	for {
		p := atomic.LoadUint64(prod)
		if c >= p {
			return
		}
		for c < p {
			off := c & mask
			hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&data[off])))
			if hdr&unix.BPF_RINGBUF_BUSY_BIT != 0 {
				return // still being written; its commit wakes us again
			}
			n := uint64(hdr &^ (unix.BPF_RINGBUF_BUSY_BIT | unix.BPF_RINGBUF_DISCARD_BIT))
			if hdr&unix.BPF_RINGBUF_DISCARD_BIT == 0 && n >= 16 {
				rec := data[off+unix.BPF_RINGBUF_HDR_SZ:]
				t.events.Add(1)
				kind := *(*uint32)(unsafe.Pointer(&rec[4]))
				if kind == recKill {
					t.kills.Add(1)
				}
				fn(int32(*(*uint32)(unsafe.Pointer(&rec[0]))), kind, *(*uint64)(unsafe.Pointer(&rec[8])))
			}
			c += (n + unix.BPF_RINGBUF_HDR_SZ + 7) &^ 7
			atomic.StoreUint64(cons, c)
		}
	}
}

func (t *exitTrace) close() {
	if t.dataPages != nil {
		_ = unix.Munmap(t.dataPages)
	}
	if t.consumerPage != nil {
		_ = unix.Munmap(t.consumerPage)
	}
	for _, fd := range []int{t.killLink, t.killProg, t.link, t.prog, t.ring, t.watched} {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}

// TraceAvailable reports whether the exit tracepoint detector can be used
// here: it loads and attaches the program once, then removes it. The error
// wraps ErrTraceUnavailable and names the step that failed.
func TraceAvailable() error {
	t, err := openExitTrace()
	if err != nil {
		return err
	}
	t.close()
	return nil
}
