package bridge

import (
	"encoding/binary"
	"strings"
	"testing"
)

func runitRecord(pid uint32, paused, want, term, state byte) []byte {
	b := make([]byte, RunitStatusSize)
	binary.BigEndian.PutUint64(b[0:8], 0x400000006a0b0c0d) // TAI64 seconds
	binary.BigEndian.PutUint32(b[8:12], 123456789)
	binary.LittleEndian.PutUint32(b[12:16], pid)
	b[16], b[17], b[18], b[19] = paused, want, term, state
	return b
}

func TestDecodeRunit(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want Status
		err  string
	}{
		{"run", runitRecord(4242, 0, 'u', 0, 1), Status{PID: 4242, Up: true, WantUp: true}, ""},
		{"run, pid above 16 bits", runitRecord(0x0003_1234, 0, 'u', 0, 1), Status{PID: 0x31234, Up: true, WantUp: true}, ""},
		{"down, want down", runitRecord(0, 0, 'd', 0, 0), Status{}, ""},
		{"down keeps the old pid: not up", runitRecord(77, 0, 'u', 0, 0), Status{WantUp: true}, ""},
		{"finish", runitRecord(88, 0, 'u', 0, 2), Status{WantUp: true, Finishing: true}, ""},
		{"paused", runitRecord(99, 1, 'u', 0, 1), Status{PID: 99, Up: true, WantUp: true, Paused: true}, ""},
		{"run with pid 0", runitRecord(0, 0, 'u', 0, 1), Status{WantUp: true}, ""},
		{"short", runitRecord(1, 0, 'u', 0, 1)[:19], Status{}, "19 bytes, want 20"},
		{"long", append(runitRecord(1, 0, 'u', 0, 1), 0), Status{}, "21 bytes, want 20"},
		{"bad state", runitRecord(1, 0, 'u', 0, 3), Status{}, "state byte 3"},
		{"bad want", runitRecord(1, 0, 'x', 0, 1), Status{}, "want byte 'x'"},
		{"pid too large", runitRecord(1<<23, 0, 'u', 0, 1), Status{}, "beyond any PID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeRunit(tc.b)
			checkDecode(t, got, err, tc.want, tc.err)
		})
	}
}

func s6Record(size int, pid uint64, wstat uint16, flags byte) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b[0:8], 0x400000006a0b0c0d)
	binary.BigEndian.PutUint64(b[12:20], 0x400000006a0b0c0e)
	binary.BigEndian.PutUint64(b[24:32], pid)
	off := 32
	if size == S6StatusSizePgid {
		binary.BigEndian.PutUint64(b[32:40], pid) // pgid
		off = 40
	}
	binary.BigEndian.PutUint16(b[off:off+2], wstat)
	b[off+2] = flags
	return b
}

func TestDecodeS6(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want Status
		err  string
	}{
		{"35: up, want up", s6Record(35, 4242, 0, s6WantUp), Status{PID: 4242, Up: true, WantUp: true}, ""},
		{"43: up, ready", s6Record(43, 4242, 0, s6WantUp|s6Ready), Status{PID: 4242, Up: true, WantUp: true, Ready: true}, ""},
		{"35: pid above 32 bits of u64 layout", s6Record(35, 0x0003_1234, 0, s6WantUp), Status{PID: 0x31234, Up: true, WantUp: true}, ""},
		{"35: down after SIGKILL", s6Record(35, 0, 9, s6WantUp), Status{WantUp: true, Wstat: 9}, ""},
		{"43: down, want down", s6Record(43, 0, 0, 0), Status{}, ""},
		{"35: finishing", s6Record(35, 555, 0x100, s6WantUp|s6Finishing), Status{WantUp: true, Finishing: true, Wstat: 0x100}, ""},
		{"35: paused", s6Record(35, 9, 0, s6Paused|s6WantUp), Status{PID: 9, Up: true, WantUp: true, Paused: true}, ""},
		{"34 bytes", s6Record(35, 1, 0, 0)[:34], Status{}, "34 bytes, want 35 or 43"},
		{"runit's size", make([]byte, 20), Status{}, "20 bytes, want 35 or 43"},
		{"unknown flag", s6Record(35, 1, 0, 0x10), Status{}, "flags 0x10"},
		{"43 read as its pgid would be flags", s6Record(43, 1, 0, 0x80), Status{}, "flags 0x80"},
		{"pid too large", s6Record(35, 1<<40, 0, s6WantUp), Status{}, "beyond any PID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeS6(tc.b)
			checkDecode(t, got, err, tc.want, tc.err)
		})
	}
}

func TestDecodeUnknownManager(t *testing.T) {
	if _, err := Decode(Supervisord, make([]byte, 20)); err == nil {
		t.Fatal("supervisord has no status record, Decode accepted one")
	}
	if st, err := Decode(Runit, runitRecord(5, 0, 'u', 0, 1)); err != nil || st.PID != 5 {
		t.Fatalf("Decode(runit) = %+v, %v", st, err)
	}
}

func checkDecode(t *testing.T, got Status, err error, want Status, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want one containing %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestLockHolder(t *testing.T) {
	locks := []byte("1: FLOCK  ADVISORY  WRITE 24046 fe:00:9988252 0 EOF\n" +
		"1: -> FLOCK  ADVISORY  WRITE 999 fe:00:9988253 0 EOF\n" +
		"2: POSIX  ADVISORY  WRITE 25677 fe:00:9988567 0 EOF\n" +
		"3: FLOCK  ADVISORY  WRITE 23488 00:1a:127 0 EOF\n")
	for _, tc := range []struct {
		major, minor uint32
		ino          uint64
		want         int
	}{
		{0xfe, 0, 9988252, 24046},
		{0xfe, 0, 9988567, 25677},
		{0, 0x1a, 127, 23488},
		{0xfe, 0, 9988253, 0}, // a waiter does not hold it
		{0xfe, 1, 9988252, 0}, // another device
		{0xfe, 0, 998825, 0},
	} {
		if got := lockHolder(locks, tc.major, tc.minor, tc.ino); got != tc.want {
			t.Errorf("lockHolder(%x:%x:%d) = %d, want %d", tc.major, tc.minor, tc.ino, got, tc.want)
		}
	}
}

func TestListenerUIDs(t *testing.T) {
	tcp := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1063 1 0 100 0 0 10 0
   1: 0100007F:2329 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 1064 1 0 100 0 0 10 0
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1065 1 0 100 0 0 10 0
`)
	if got := listenerUIDs(tcp, 9001); len(got) != 1 || got[0] != 0 {
		t.Errorf("port 9001: %v, want [0] (the established connection is not a listener)", got)
	}
	if got := listenerUIDs(tcp, 8080); len(got) != 1 || got[0] != 1000 {
		t.Errorf("port 8080: %v, want [1000]", got)
	}
	if got := listenerUIDs(tcp, 22); len(got) != 0 {
		t.Errorf("port 22: %v, want none", got)
	}
}
