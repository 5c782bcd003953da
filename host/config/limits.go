package config

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// Limits on what a configuration file may be. They keep a hostile or
// broken file (a device, a FIFO, megabytes of nesting) from hanging or
// exhausting hbd at start, at --check and at a reload.
const (
	// MaxFileSize is the largest configuration file, main or included.
	MaxFileSize = 4 << 20
	// MaxNesting is the deepest nesting of arrays, inline tables and
	// dotted keys in one file. hb's schema needs 3.
	MaxNesting = 32
)

// readConfigFile reads a regular file of at most MaxFileSize bytes. It
// never blocks on a FIFO or reads from a device. A directory gives an
// error wrapping syscall.EISDIR.
func readConfigFile(name string) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	switch {
	case st.IsDir():
		return nil, &os.PathError{Op: "read", Path: name, Err: syscall.EISDIR}
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%s: not a regular file (%s)", name, st.Mode().Type())
	case st.Size() > MaxFileSize:
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a configuration file may have", name, st.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: more than the %d bytes a configuration file may have", name, MaxFileSize)
	}
	return data, nil
}

// checkNesting returns the line of the first place where data nests deeper
// than MaxNesting (brackets and braces, or dots in one line outside
// strings), or 0. It skips strings and comments without fully parsing TOML:
// it only has to bound the work the decoder is given.
func checkNesting(data []byte) int {
	line, depth, dots := 1, 0, 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch c {
		case '\n':
			line++
			dots = 0
		case '#':
			for i < len(data) && data[i] != '\n' {
				i++
			}
			i--
		case '"', '\'':
			q := c
			multi := i+2 < len(data) && data[i+1] == q && data[i+2] == q
			if multi {
				i += 3
			} else {
				i++
			}
			for ; i < len(data); i++ {
				if data[i] == '\n' {
					line++
					if !multi {
						break
					}
				}
				if q == '"' && data[i] == '\\' {
					i++
					continue
				}
				if data[i] == q && (!multi || (i+2 < len(data) && data[i+1] == q && data[i+2] == q)) {
					if multi {
						i += 2
					}
					break
				}
			}
		case '[', '{':
			depth++
			if depth > MaxNesting {
				return line
			}
		case ']', '}':
			if depth > 0 {
				depth--
			}
		case '.':
			dots++
			if dots > MaxNesting {
				return line
			}
		}
	}
	return 0
}
