package main

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

//go:embed csrc/helper.c
var helperSource []byte

// compileHelper writes the C helper's source into dir and compiles it with
// cc against includeDir/hb_shm.h.
func compileHelper(cc, includeDir, dir string) (string, error) {
	src := filepath.Join(dir, "helper.c")
	if err := os.WriteFile(src, helperSource, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "hbbench-helper")
	cmd := exec.Command(cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-I", includeDir, "-o", out, src, "-pthread")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("compile the C helper with %s: %w\n%s", cc, err, b)
	}
	return out, nil
}

// findInclude finds contrib/c/hb_shm.h: in dir if given, else next to the
// executable's parent (bin/../contrib/c), else up from the working directory.
func findInclude(dir string) (string, error) {
	var cands []string
	if dir != "" {
		cands = append(cands, dir)
	} else {
		if exe, err := os.Executable(); err == nil {
			cands = append(cands, filepath.Join(filepath.Dir(exe), "..", "contrib", "c"))
		}
		if wd, err := os.Getwd(); err == nil {
			for d := wd; ; d = filepath.Dir(d) {
				cands = append(cands, filepath.Join(d, "contrib", "c"))
				if filepath.Dir(d) == d {
					break
				}
			}
		}
	}
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, "hb_shm.h")); err == nil {
			return filepath.Clean(c), nil
		}
	}
	return "", fmt.Errorf("contrib/c/hb_shm.h not found (looked in %s); give --include DIR", strings.Join(cands, ", "))
}

// helper is a running `hbbench-helper serve`: one command line in, one reply
// line out.
type helper struct {
	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startHelper(path string) (*helper, error) {
	cmd := exec.Command(path, "serve")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	return &helper{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20)}, nil
}

// reply is a parsed "ok k=v ..." line.
type reply map[string]string

func (r reply) u64(k string) uint64 {
	v, _ := strconv.ParseUint(r[k], 10, 64)
	return v
}

// floats parses a comma-separated list.
func (r reply) floats(k string) []float64 {
	if r[k] == "" {
		return nil
	}
	parts := strings.Split(r[k], ",")
	out := make([]float64, 0, len(parts))
	for _, p := range parts {
		f, err := strconv.ParseFloat(p, 64)
		if err == nil {
			out = append(out, f)
		}
	}
	return out
}

// call sends one command and returns its reply; an "err ..." reply is an error.
func (h *helper) call(format string, args ...any) (reply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if _, err := io.WriteString(h.in, line+"\n"); err != nil {
		return nil, fmt.Errorf("helper: %s: %w", line, err)
	}
	resp, err := h.out.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("helper: %s: %w", line, err)
	}
	resp = strings.TrimSpace(resp)
	fields := strings.Fields(resp)
	if len(fields) == 0 || fields[0] != "ok" {
		return nil, fmt.Errorf("helper: %s: %s", strings.Fields(line)[0], strings.TrimPrefix(resp, "err "))
	}
	r := reply{}
	for _, f := range fields[1:] {
		if k, v, ok := strings.Cut(f, "="); ok {
			r[k] = v
		}
	}
	return r, nil
}

// close ends the helper (its bare-loop children with it).
func (h *helper) close() {
	if h == nil {
		return
	}
	_, _ = h.call("quit")
	h.in.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }() // a helper's exit status says nothing here
	select {
	case <-done:
	case <-afterSeconds(5):
		_ = h.cmd.Process.Kill()
		<-done
	}
}
