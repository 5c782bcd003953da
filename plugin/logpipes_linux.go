package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// InheritedPipe is one log pipe an earlier plugin made, passed to this one
// by hbd: descriptors R and W in this process, for service Name's Stream,
// with the log settings hbd has for it.
type InheritedPipe struct {
	Name       string `json:"name"`
	Stream     string `json:"stream"`
	R          int    `json:"r"`
	W          int    `json:"w"`
	Dir        string `json:"dir"`
	MaxBytes   int64  `json:"max_bytes"`
	Backups    int    `json:"backups"`
	Timestamps bool   `json:"timestamps"`
}

// ReadInheritedPipes reads the list hbd wrote (JSON, one pipe per line) from
// descriptor fd, which it closes; every descriptor named is made
// close-on-exec.
func ReadInheritedPipes(fd int) ([]InheritedPipe, error) {
	f := os.NewFile(uintptr(fd), "log-pipes")
	if f == nil {
		return nil, fmt.Errorf("descriptor %d is not open", fd)
	}
	defer f.Close()
	_, _ = f.Seek(0, io.SeekStart)
	var out []InheritedPipe
	seen := map[int]bool{fd: true}
	dec := json.NewDecoder(f)
	for {
		var p InheritedPipe
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("descriptor %d: %w", fd, err)
		}
		if p.R < 3 || p.W < 3 || p.R == p.W || seen[p.R] || seen[p.W] || (p.Stream != "out" && p.Stream != "err") {
			return nil, fmt.Errorf("descriptor %d: bad entry for %q: r %d w %d stream %q (each descriptor once, above 2)", fd, p.Name, p.R, p.W, p.Stream)
		}
		seen[p.R], seen[p.W] = true, true
		unix.CloseOnExec(p.R)
		unix.CloseOnExec(p.W)
		out = append(out, p)
	}
	return out, nil
}

// WriteInheritedPipes writes pipes for ReadInheritedPipes into a new memfd
// and returns it, positioned at the start.
func WriteInheritedPipes(pipes []InheritedPipe) (*os.File, error) {
	fd, err := unix.MemfdCreate("hb-log-pipes", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "hb-log-pipes")
	enc := json.NewEncoder(f)
	for _, p := range pipes {
		if err := enc.Encode(p); err != nil {
			f.Close()
			return nil, err
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
