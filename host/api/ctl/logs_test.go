package ctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeLines(t *testing.T, path string, from, to int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		fmt.Fprintf(f, "line %d\n", i)
	}
	f.Close()
}

func TestLastLinesAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rx.out.log")
	writeLines(t, path+".2", 0, 3)
	writeLines(t, path+".1", 3, 5)
	writeLines(t, path, 5, 7)
	os.WriteFile(path, append(mustRead(t, path), "partial"...), 0o644)
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, ""},
		{1, "partial\n"},
		{3, "line 5\nline 6\npartial\n"},
		{5, "line 3\nline 4\nline 5\nline 6\npartial\n"},
		{100, "line 0\nline 1\nline 2\nline 3\nline 4\nline 5\nline 6\npartial\n"},
	} {
		got, _, _, err := lastLines(path, tc.n, false)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, l := range got {
			b.Write(l)
		}
		if b.String() != tc.want {
			t.Errorf("lastLines(%d) = %q, want %q", tc.n, b.String(), tc.want)
		}
	}
	// Kept open for follow: the incomplete line is left for it.
	got, cur, off, err := lastLines(path, 2, true)
	if err != nil || cur == nil || len(got) != 2 || string(got[1]) != "line 6\n" || off != int64(len(mustRead(t, path))-len("partial")) {
		t.Errorf("lastLines(keep) = %q, %v, offset %d", got, err, off)
	}
	cur.Close()
	// Long files: reading backwards crosses chunks.
	big := filepath.Join(dir, "big.log")
	writeLines(t, big, 0, 50000)
	got, _, _, err = lastLines(big, 2, false)
	if err != nil || len(got) != 2 || string(got[0]) != "line 49998\n" || string(got[1]) != "line 49999\n" {
		t.Errorf("lastLines(big, 2) = %q, %v", got, err)
	}
	if _, _, _, err := lastLines(filepath.Join(dir, "none.log"), 3, false); !os.IsNotExist(err) {
		t.Errorf("a missing log: %v, want not exist", err)
	}
	os.Symlink(path, filepath.Join(dir, "link.log"))
	if _, _, _, err := lastLines(filepath.Join(dir, "link.log"), 3, false); err == nil {
		t.Error("a symlink was followed")
	}
}

func mustRead(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuf is a strings.Builder safe to read while follow writes it.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFollowAcrossRotations: follow prints every line once, in order,
// across 5 rotations by rename and one trim in place.
func TestFollowAcrossRotations(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rx.out.log")
	writeLines(t, path, 0, 10) // before follow: not printed
	ctx, cancel := context.WithCancel(context.Background())
	var out, errw syncBuf
	done := make(chan error, 1)
	_, cur, off, err := lastLines(path, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- follow(ctx, path, cur, off, &out, &errw) }()
	waitFor := func(s string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("follow never printed %q; printed %q", s, out.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// follow starts where lastLines stopped: line 10 is the first printed.
	n, first := 10, 10
	for rot := 0; rot < 5; rot++ {
		writeLines(t, path, n, n+100)
		n += 100
		// Half a line, then the rotation: the rest of it goes to the old
		// file (its writer still had it open), then new lines to the new.
		f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		fmt.Fprintf(f, "line %d", n)
		for k := 5; k >= 1; k-- {
			os.Rename(fmt.Sprintf("%s.%d", path, k), fmt.Sprintf("%s.%d", path, k+1))
		}
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "\n")
		f.Close()
		n++
		writeLines(t, path, n, n+50)
		n += 50
		waitFor(fmt.Sprintf("line %d\n", n-1))
	}
	// A trim in place: the file is truncated, writing goes on at 0.
	os.Truncate(path, 0)
	writeLines(t, path, n, n+3)
	n += 3
	waitFor(fmt.Sprintf("line %d\n", n-1))
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("follow returned %v, want context.Canceled", err)
	}
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != n-first {
		t.Errorf("%d lines from line %d, want %d", len(got), first, n-first)
	}
	for k, l := range got {
		if l != fmt.Sprintf("line %d", first+k) {
			t.Fatalf("line %d of the output is %q, want %q (every line once, in order)", k, l, fmt.Sprintf("line %d", first+k))
		}
	}
	if !strings.Contains(errw.String(), "trimmed in place") {
		t.Errorf("the trim is not reported: %q", errw.String())
	}
}

// TestFollowSeveralRotationsInOneStep: rotations faster than follow looks
// (a crash loop with a small log_max_bytes) lose no file: the ones rotated
// in between are printed whole, oldest first.
func TestFollowSeveralRotationsInOneStep(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rx.out.log")
	writeLines(t, path, 0, 2)
	_, cur, off, err := lastLines(path, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	var out, errw syncBuf
	fl := &follower{path: path, f: cur, off: off, out: &out, errw: &errw}
	defer fl.close()
	rotate := func() {
		for k := 5; k >= 1; k-- {
			os.Rename(fmt.Sprintf("%s.%d", path, k), fmt.Sprintf("%s.%d", path, k+1))
		}
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
	}
	writeLines(t, path, 2, 4) // the file follow reads, then three rotations
	rotate()
	writeLines(t, path, 4, 6)
	rotate()
	writeLines(t, path, 6, 8)
	rotate()
	writeLines(t, path, 8, 10) // the current file
	if err := fl.step(); err != nil {
		t.Fatal(err)
	}
	want := ""
	for i := 2; i < 10; i++ {
		want += fmt.Sprintf("line %d\n", i)
	}
	if out.String() != want {
		t.Errorf("after three rotations in one step: %q, want %q", out.String(), want)
	}
}
