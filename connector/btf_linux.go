package connector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The kernel's own type information (BTF, /sys/kernel/btf/vmlinux) says
// where a field sits in a kernel structure on the running kernel. The kill
// program needs one such offset: task_struct.tgid, to name the process a
// signal is sent to. Only the layout is read; nothing is loaded from it.

// vmlinuxBTF is where the kernel publishes its BTF.
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// errNoMember is returned when the structure or its field is not found.
var errNoMember = errors.New("no such structure member")

// BTF type kinds (include/uapi/linux/btf.h) whose records carry extra
// data after the 12-byte struct btf_type.
const (
	btfKindInt       = 1
	btfKindArray     = 3
	btfKindStruct    = 4
	btfKindUnion     = 5
	btfKindEnum      = 6
	btfKindFuncProto = 13
	btfKindVar       = 14
	btfKindDatasec   = 15
	btfKindDeclTag   = 17
	btfKindEnum64    = 19
)

// kernelMemberOffsets returns the byte offsets of fields in struct name on
// the running kernel, from its BTF, read once. The BTF is mapped, not read,
// where the kernel allows it (6.16 on), so the plugin's memory does not
// grow by its size.
func kernelMemberOffsets(name string, fields ...string) ([]int, error) {
	f, err := os.Open(vmlinuxBTF)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err == nil {
		defer unix.Munmap(b)
	} else if b, err = os.ReadFile(vmlinuxBTF); err != nil {
		return nil, err
	}
	offs := make([]int, len(fields))
	for i, field := range fields {
		if offs[i], err = btfMemberOffset(b, name, field); err != nil {
			return nil, err
		}
	}
	return offs, nil
}

// btfMemberOffset finds field in the struct called name in the raw BTF b,
// looking into anonymous structs and unions inside it (a kernel built with
// randomized or grouped layouts nests fields in them). It returns the
// field's byte offset; a bitfield is an error.
func btfMemberOffset(b []byte, name, field string) (int, error) {
	le := binary.LittleEndian
	if len(b) < 24 || le.Uint16(b) != 0xeb9f {
		return 0, fmt.Errorf("%s: not little-endian BTF", vmlinuxBTF)
	}
	hdrLen := le.Uint32(b[4:])
	typeOff, typeLen := le.Uint32(b[8:]), le.Uint32(b[12:])
	strOff, strLen := le.Uint32(b[16:]), le.Uint32(b[20:])
	end := func(off, n uint32) bool { return uint64(hdrLen)+uint64(off)+uint64(n) <= uint64(len(b)) }
	if !end(typeOff, typeLen) || !end(strOff, strLen) {
		return 0, fmt.Errorf("%s: sections out of bounds", vmlinuxBTF)
	}
	types := b[hdrLen+typeOff : hdrLen+typeOff+typeLen]
	strs := b[hdrLen+strOff : hdrLen+strOff+strLen]
	str := func(off uint32) string {
		if off >= uint32(len(strs)) {
			return ""
		}
		s := strs[off:]
		for i, c := range s {
			if c == 0 {
				return string(s[:i])
			}
		}
		return ""
	}
	// A type's ID is its place in the section (from 1). Nothing is indexed:
	// the plugin's heap would keep the growth. next steps over one record;
	// typeAt walks to an ID (for the few anonymous members).
	next := func(off uint32) uint32 {
		info := le.Uint32(types[off+4:])
		kind, vlen := (info>>24)&0x1f, info&0xffff
		off += 12
		switch kind {
		case btfKindInt, btfKindVar, btfKindDeclTag:
			off += 4
		case btfKindArray:
			off += 12
		case btfKindStruct, btfKindUnion, btfKindDatasec, btfKindEnum64:
			off += 12 * vlen
		case btfKindEnum, btfKindFuncProto:
			off += 8 * vlen
		}
		return off
	}
	typeAt := func(id uint32) (uint32, bool) {
		off := uint32(0)
		for n := uint32(1); off+12 <= uint32(len(types)); n++ {
			if n == id {
				return off, true
			}
			off = next(off)
		}
		return 0, false
	}
	var target uint32
	for off, id := uint32(0), uint32(1); off+12 <= uint32(len(types)); off, id = next(off), id+1 {
		if (le.Uint32(types[off+4:])>>24)&0x1f == btfKindStruct && str(le.Uint32(types[off:])) == name {
			target = id
			break
		}
	}
	var find func(id uint32, base uint32, depth int) (uint32, bool, error)
	find = func(id uint32, base uint32, depth int) (uint32, bool, error) {
		off, ok := typeAt(id)
		if id == 0 || !ok || depth > 8 {
			return 0, false, nil
		}
		info := le.Uint32(types[off+4:])
		kind, vlen, bitfields := (info>>24)&0x1f, info&0xffff, info>>31 == 1
		if kind != btfKindStruct && kind != btfKindUnion {
			return 0, false, nil
		}
		if uint64(off)+12+12*uint64(vlen) > uint64(len(types)) {
			return 0, false, fmt.Errorf("%s: type %d out of bounds", vmlinuxBTF, id)
		}
		for i := range vlen {
			m := types[off+12+12*i:]
			mname, mtype, moff := str(le.Uint32(m)), le.Uint32(m[4:]), le.Uint32(m[8:])
			size := uint32(0)
			if bitfields {
				size, moff = moff>>24, moff&0xffffff
			}
			switch {
			case mname == field:
				if size != 0 || moff%8 != 0 {
					return 0, false, fmt.Errorf("%s: %s.%s is a bitfield", vmlinuxBTF, name, field)
				}
				return base + moff/8, true, nil
			case mname == "" && moff%8 == 0:
				if at, ok, err := find(mtype, base+moff/8, depth+1); ok || err != nil {
					return at, ok, err
				}
			}
		}
		return 0, false, nil
	}
	at, ok, err := find(target, 0, 0)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s: %s.%s: %w", vmlinuxBTF, name, field, errNoMember)
	}
	return int(at), nil
}
