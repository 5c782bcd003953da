package connector

import (
	"encoding/binary"
	"math"
	"slices"

	"golang.org/x/net/bpf"
)

// The socket filter. The proc connector multicasts the exit of every task on
// the machine to every listener; a classic BPF program attached to the socket
// (SO_ATTACH_FILTER) lets the kernel drop, before queuing, the exit events of
// processes hb does not watch, so a flood of unrelated exits neither wakes
// the connector goroutine nor fills the receive buffer.
//
// The program only ever drops exit events whose process is not in the set.
// Dropping can cost at most the fast path for a process (its pidfd still
// reports it), never a wrong report, so everything the program cannot judge
// is accepted: short datagrams, other connector ids, other event types, ACKs.

// Classic BPF opcodes used by the filter (include/uapi/linux/bpf_common.h,
// include/uapi/linux/filter.h).
const (
	opLdLen  = 0x80 // BPF_LD|BPF_W|BPF_LEN: A = length of the datagram
	opLdAbsW = 0x20 // BPF_LD|BPF_W|BPF_ABS: A = the 32 bits at k, read big-endian
	opJeqK   = 0x15 // BPF_JMP|BPF_JEQ|BPF_K: if A == k skip jt, else jf
	opJgeK   = 0x35 // BPF_JMP|BPF_JGE|BPF_K: if A >= k (unsigned) skip jt, else jf
	opJa     = 0x05 // BPF_JMP|BPF_JA: skip k (32 bits)
	opRetK   = 0x06 // BPF_RET|BPF_K: keep k bytes of the datagram; 0 drops it
)

const (
	// filterMaxInsns is BPF_MAXINSNS, the kernel's limit on the length of a
	// classic BPF program.
	filterMaxInsns = 4096
	// maxSkip is the longest conditional jump: jt and jf are 8 bits.
	maxSkip = math.MaxUint8
	// filterAccept keeps the whole datagram: the kernel trims to the
	// returned length only when it is shorter than the datagram.
	filterAccept = math.MaxUint32
	// filterDrop drops the datagram.
	filterDrop = 0
)

// filterLeafKeys are the leaf sizes tried, in order, by compileExitFilter: a
// leaf compares the TGID with up to that many keys one after the other. Small
// leaves make the shortest programs per lookup; larger ones fit more TGIDs
// under filterMaxInsns (about 1.75 and 1.2 instructions per TGID).
var filterLeafKeys = [...]int{4, 16}

// compileExitFilter returns a classic BPF program for a proc connector socket
// that drops the PROC_EVENT_EXIT events of every process whose TGID is not in
// tgids and accepts every other datagram whole. Thread exits carry their
// process's TGID, so those of a watched process pass. A datagram is taken for
// an exit event when it is at least FrameLen bytes long and its cn_msg id is
// {CN_IDX_PROC, CN_VAL_PROC} and proc_event.what is PROC_EVENT_EXIT, read at
// the offsets DecodeFrame uses; only the first netlink message is looked at
// (the kernel sends one per datagram). An empty tgids drops every exit event.
//
// The TGID is found by a binary search over the sorted set, down to a leaf of
// a few linear comparisons: O(log n) instructions per datagram. ok is false
// when the set is too large for one program (more than filterMaxInsns
// instructions, about 3,300 TGIDs); the caller then attaches no filter.
// tgids may be in any order and hold duplicates; it is not modified.
func compileExitFilter(tgids []uint32) (prog []bpf.RawInstruction, ok bool) {
	return compileExitFilterFor(tgids, 0)
}

// compileExitFilterFor is compileExitFilter that also accepts every exit
// event whose parent process (exit.parent_tgid) is parent, unless parent is
// 0. The watched children of the listening process need not be in tgids
// then, so spawning and respawning them never changes the program.
func compileExitFilterFor(tgids []uint32, parent uint32) (prog []bpf.RawInstruction, ok bool) {
	if len(tgids) > filterMaxInsns {
		return nil, false // every TGID costs at least one instruction
	}
	// BPF loads are big-endian while the kernel writes the fields in host
	// order: compare, and sort, the values a load yields.
	keys := make([]uint32, len(tgids))
	for i, v := range tgids {
		keys[i] = loaded(v)
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	for _, leaf := range filterLeafKeys {
		c := filterCompiler{leafKeys: leaf, prog: make([]bpf.RawInstruction, 0, len(keys)*2+16)}
		c.header(parent)
		if len(keys) == 0 {
			c.emit(opRetK, 0, 0, filterDrop)
		} else {
			c.tree(keys)
		}
		if len(c.prog) <= filterMaxInsns {
			return c.prog, true
		}
	}
	return nil, false
}

// loaded is what a 32-bit BPF load reads from a field that holds v in host
// byte order.
func loaded(v uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return binary.BigEndian.Uint32(b[:])
}

// filterCompiler emits one program. Every jump is relative and stays inside
// the subtree that emits it, so a subtree can be moved as a block.
type filterCompiler struct {
	leafKeys int
	prog     []bpf.RawInstruction
}

func (c *filterCompiler) emit(op uint16, jt, jf uint8, k uint32) {
	c.prog = append(c.prog, bpf.RawInstruction{Op: op, Jt: jt, Jf: jf, K: k})
}

// header emits the checks that single out exit events, leaving the TGID in A:
//
//	0: A = len
//	1: if A < FrameLen goto 8
//	2: A = cn_msg.id.idx
//	3: if A != CN_IDX_PROC goto 8
//	4: A = cn_msg.id.val
//	5: if A != CN_VAL_PROC goto 8
//	6: A = proc_event.what
//	7: if A == PROC_EVENT_EXIT goto 9
//	8: accept
//	9: A = exit.process_tgid
//
// With a parent, 9 becomes
//
//	9: A = exit.parent_tgid
//	10: if A != parent goto 12
//	11: accept
//	12: A = exit.process_tgid
//
// Checking the length first keeps every load inside the datagram (a load
// past its end would end the program with a drop).
func (c *filterCompiler) header(parent uint32) {
	c.emit(opLdLen, 0, 0, 0)
	c.emit(opJgeK, 0, 6, FrameLen)
	c.emit(opLdAbsW, 0, 0, offCnIdx)
	c.emit(opJeqK, 0, 4, loaded(cnIdxProc))
	c.emit(opLdAbsW, 0, 0, offCnVal)
	c.emit(opJeqK, 0, 2, loaded(cnValProc))
	c.emit(opLdAbsW, 0, 0, offWhat)
	c.emit(opJeqK, 1, 0, loaded(procEventExit))
	c.emit(opRetK, 0, 0, filterAccept)
	if parent != 0 {
		c.emit(opLdAbsW, 0, 0, offExitPT)
		c.emit(opJeqK, 0, 1, loaded(parent))
		c.emit(opRetK, 0, 0, filterAccept)
	}
	c.emit(opLdAbsW, 0, 0, offExitTG)
}

// tree emits the search of A among keys (sorted, distinct, not empty). An
// inner node splits keys in two halves:
//
//	if A >= keys[mid] goto right
//	left subtree
//	right subtree
//
// When the left subtree is longer than a conditional jump reaches, the test
// jumps to an unconditional jump (32-bit offset) instead:
//
//	if A >= keys[mid] goto next else skip 1
//	next: goto right
func (c *filterCompiler) tree(keys []uint32) {
	if len(keys) <= c.leafKeys {
		c.leaf(keys)
		return
	}
	mid := len(keys) / 2
	at := len(c.prog)
	c.emit(opJgeK, 0, 1, keys[mid])
	c.emit(opJa, 0, 0, 0)
	c.tree(keys[:mid])
	left := len(c.prog) - (at + 2)
	if left <= maxSkip {
		// Short enough for the test itself: drop the spare jump and move
		// the left subtree up by one.
		copy(c.prog[at+1:], c.prog[at+2:])
		c.prog = c.prog[:len(c.prog)-1]
		c.prog[at] = bpf.RawInstruction{Op: opJgeK, Jt: uint8(left), Jf: 0, K: keys[mid]}
	} else {
		c.prog[at+1].K = uint32(left)
	}
	c.tree(keys[mid:])
}

// leaf emits a linear search of A among keys (at most leafKeys), with its own
// two returns so that every jump in it is short:
//
//	if A == keys[0] goto accept
//	...
//	if A == keys[n-1] goto accept
//	drop
//	accept
func (c *filterCompiler) leaf(keys []uint32) {
	n := len(keys)
	for i, k := range keys {
		c.emit(opJeqK, uint8(n-i), 0, k)
	}
	c.emit(opRetK, 0, 0, filterDrop)
	c.emit(opRetK, 0, 0, filterAccept)
}
