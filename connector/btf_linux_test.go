package connector

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"
)

// TestKernelMemberOffset: the running kernel's task_struct has pid and, right
// after it, tgid (both pid_t), as every kernel since 2.6 lays them out.
func TestKernelMemberOffset(t *testing.T) {
	if _, err := os.Stat(vmlinuxBTF); err != nil {
		t.Skipf("no kernel BTF here (%v): the kill program is not used", err)
	}
	offs, err := kernelMemberOffsets("task_struct", "pid", "tgid")
	if err != nil {
		t.Fatal(err)
	}
	pid, tgid := offs[0], offs[1]
	if pid <= 0 || tgid != pid+4 {
		t.Errorf("task_struct: pid at %d, tgid at %d; want tgid right after pid", pid, tgid)
	}
	if _, err := kernelMemberOffsets("task_struct", "tgid", "no_such_field"); !errors.Is(err, errNoMember) {
		t.Errorf("a missing field: err %v, want errNoMember", err)
	}
}

// btfBuilder writes a minimal BTF blob for the decoder's tests.
type btfBuilder struct {
	types, strs []byte
	n           uint32
}

func (b *btfBuilder) str(s string) uint32 {
	if len(b.strs) == 0 {
		b.strs = []byte{0}
	}
	off := uint32(len(b.strs))
	b.strs = append(append(b.strs, s...), 0)
	return off
}

func (b *btfBuilder) u32(v ...uint32) {
	for _, x := range v {
		b.types = binary.LittleEndian.AppendUint32(b.types, x)
	}
}

// add appends a type record and returns its ID.
func (b *btfBuilder) add(name string, kind, vlen uint32, bitfields bool, size uint32, extra ...uint32) uint32 {
	info := kind<<24 | vlen
	if bitfields {
		info |= 1 << 31
	}
	b.u32(b.str(name), info, size)
	b.u32(extra...)
	b.n++
	return b.n
}

func (b *btfBuilder) bytes() []byte {
	h := make([]byte, 24)
	binary.LittleEndian.PutUint16(h, 0xeb9f)
	h[2] = 1
	binary.LittleEndian.PutUint32(h[4:], 24)
	binary.LittleEndian.PutUint32(h[8:], 0)
	binary.LittleEndian.PutUint32(h[12:], uint32(len(b.types)))
	binary.LittleEndian.PutUint32(h[16:], uint32(len(b.types)))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(b.strs)))
	return append(append(h, b.types...), b.strs...)
}

// TestBTFMemberOffset: fields are found directly, inside anonymous unions
// and structs (offsets add up), past records of every size; a bitfield and a
// missing struct are errors.
func TestBTFMemberOffset(t *testing.T) {
	var b btfBuilder
	b.str("")
	intID := b.add("int", btfKindInt, 0, false, 4, 32)
	b.add("", btfKindEnum, 2, false, 4, b.str("A"), 0, b.str("B"), 1)
	b.add("arr", btfKindArray, 0, false, 0, intID, intID, 4)
	// struct inner { int x; int y; } anonymous, y at 4
	inner := b.add("", btfKindStruct, 2, false, 8, b.str("x"), intID, 0, b.str("y"), intID, 32)
	// union { int u; struct inner; } anonymous
	un := b.add("", btfKindUnion, 2, false, 8, b.str("u"), intID, 0, 0, inner, 0)
	b.add("", btfKindFuncProto, 1, false, intID, b.str("arg"), intID)
	// struct task { int a; <union at 64>; int c:3 (bitfield at 128) }
	b.add("task", btfKindStruct, 3, true, 24, b.str("a"), intID, 0, 0, un, 64, b.str("c"), intID, 3<<24|128)
	raw := b.bytes()
	for field, want := range map[string]int{"a": 0, "u": 8, "x": 8, "y": 12} {
		got, err := btfMemberOffset(raw, "task", field)
		if err != nil || got != want {
			t.Errorf("task.%s: %d, %v; want %d", field, got, err, want)
		}
	}
	if _, err := btfMemberOffset(raw, "task", "c"); err == nil {
		t.Error("a bitfield: no error")
	}
	if _, err := btfMemberOffset(raw, "nope", "a"); !errors.Is(err, errNoMember) {
		t.Errorf("a missing struct: %v", err)
	}
	if _, err := btfMemberOffset(raw[:10], "task", "a"); err == nil {
		t.Error("a truncated blob: no error")
	}
}
