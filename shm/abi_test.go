package shm

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

func TestStateNames(t *testing.T) {
	want := []string{"free", "stopped", "starting", "running", "backoff", "exited", "fatal", "stopping", "hung"}
	for i, name := range want {
		s := State(i)
		if got := s.String(); got != name {
			t.Errorf("State(%d).String() = %q, want %q", i, got, name)
		}
		if !s.Valid() {
			t.Errorf("State(%d).Valid() = false", i)
		}
		got, err := ParseState(name)
		if err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v; want %v", name, got, err, s)
		}
	}
	if got := State(9).String(); got != "state(9)" {
		t.Errorf("State(9).String() = %q", got)
	}
	if State(9).Valid() {
		t.Error("State(9).Valid() = true")
	}
	if _, err := ParseState("Running"); err == nil {
		t.Error("ParseState(Running): no error")
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
		why  string
	}{
		{"rx", true, ""},
		{"a.b-c_9", true, ""},
		{strings.Repeat("x", NameMax), true, ""},
		{"", false, "empty"},
		{strings.Repeat("x", NameMax+1), false, "48 bytes"},
		{"a/b", false, "'/' at offset 1"},
		{"sp ace", false, "' ' at offset 2"},
		{"nul\x00", false, "'\\x00' at offset 3"},
		{"ü", false, "offset 0"},
	}
	for _, tt := range tests {
		err := ValidName(tt.name)
		if tt.ok {
			if err != nil {
				t.Errorf("ValidName(%q) = %v, want nil", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), tt.why) {
			t.Errorf("ValidName(%q) = %v, want ErrBadName mentioning %q", tt.name, err, tt.why)
		}
	}
}

func TestValidTableName(t *testing.T) {
	for _, name := range []string{"hb", "hb.test-1", ".hidden", strings.Repeat("n", 255)} {
		if err := ValidTableName(name); err != nil {
			t.Errorf("ValidTableName(%q) = %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "/hb", "x\x00", strings.Repeat("n", 256)} {
		if err := ValidTableName(name); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidTableName(%q) = %v, want ErrBadName", name, err)
		}
		if _, err := Create(name, Options{Dir: t.TempDir()}); !errors.Is(err, ErrBadName) {
			t.Errorf("Create(%q) = %v, want ErrBadName", name, err)
		}
		if strings.HasPrefix(name, "/") {
			continue // Open takes an absolute path as the table's path
		}
		if _, err := Open(name); !errors.Is(err, ErrBadName) {
			t.Errorf("Open(%q) = %v, want ErrBadName", name, err)
		}
	}
}

func TestParseStartTime(t *testing.T) {
	// 52 fields as in Linux 6.x; field 22 (starttime) is 123456.
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49\n"
	tests := []struct {
		name, stat string
		want       uint64
		err        bool
	}{
		{"plain", "42 (hbclient)" + tail, 123456, false},
		{"spaces", "42 (a b c)" + tail, 123456, false},
		{"parens", "42 (x) S 1 (y))" + tail, 123456, false},
		{"two-letter state", "42 (x) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 20", 0, true},
		{"empty comm", "42 ()" + tail, 123456, false},
		{"no paren", "42 hbclient S 1", 0, true},
		{"short", "42 (x) S 1 2 3", 0, true},
		{"not a number", "42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 abc 20", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ParseStat([]byte(tt.stat))
			if got := st.StartTime; (err != nil) != tt.err || got != tt.want {
				t.Errorf("ParseStat(%q).StartTime = %d, %v; want %d, error %v", tt.stat, got, err, tt.want, tt.err)
			}
			if err == nil && (st.State != 'S' || st.PPID != 1 || st.PGRP != 2 || st.UTime != 11 || st.STime != 12) {
				t.Errorf("ParseStat(%q) = %+v; want state S, ppid 1, pgrp 2, utime 11, stime 12", tt.stat, st)
			}
		})
	}
}

func TestStartTime(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatalf("StartTime(self): %v", err)
	}
	if st == 0 {
		t.Error("StartTime(self) = 0")
	}
	again, err := StartTime(os.Getpid())
	if err != nil || again != st {
		t.Errorf("StartTime(self) changed: %d then %d, %v", st, again, err)
	}
	// Beyond pid_max (at most 2^22): never exists.
	if _, err := StartTime(1 << 23); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("StartTime(no such pid) = %v, want fs.ErrNotExist", err)
	}
}

func TestMonotonicNs(t *testing.T) {
	a := MonotonicNs()
	b := MonotonicNs()
	if a == 0 || b < a {
		t.Errorf("MonotonicNs went %d then %d", a, b)
	}
}

func TestOpenAbsolutePath(t *testing.T) {
	dir := t.TempDir()
	w, err := Create("abs", Options{Dir: dir, Slots: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(true)
	tb, err := Open(dir + "/abs")
	if err != nil {
		t.Fatalf("Open(path) = %v", err)
	}
	defer tb.Close()
	if tb.Len() != 4 {
		t.Errorf("Len = %d, want 4", tb.Len())
	}
}
