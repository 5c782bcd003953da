package config

import (
	"slices"
	"strings"
)

// writtenKeys records which keys of one table are written in its file
// ("environment.NAME" too, for a service's variables) and finds their lines,
// for errors found after Load (Validate, Resolve, Check).
//
// While Load runs it holds the decoder's references to the keys (refs, in
// src). At the end of a successful Load, settle turns them into plain line
// numbers when the key scanner agreed with the decoder (see lines.go): then
// the decoder's state of the file, by far the largest part of a loaded
// Config (several MiB for a thousand services), is no longer referenced. When
// the scanner did not agree, lines stay found on demand through the decoder,
// which costs a pass over the file per key and so is not done for every key
// up front.
//
// A settled writtenKeys is read-only; an unsettled one serialises the
// decoder through src.mu. Both are safe for concurrent use.
type writtenKeys struct {
	src  *source           // the defining file, until settled; nil for a table built in code
	refs map[string]keyRef // the keys as written, by key, until settled
	at   []keyAt           // once settled: every written key, sorted by key
}

// keyAt is one settled key: its name relative to its table, and its line
// (0 if unknown).
type keyAt struct {
	key  string
	line int32
}

func newWrittenKeys(src *source, refs map[string]keyRef) writtenKeys {
	return writtenKeys{src: src, refs: refs}
}

// add records key as written at r. Load only, before settle.
func (w *writtenKeys) add(key string, r keyRef) { w.refs[key] = r }

// remove forgets key (an unknown key, reported already). Load only.
func (w *writtenKeys) remove(key string) { delete(w.refs, key) }

// find returns the settled entry of key.
func (w *writtenKeys) find(key string) (keyAt, bool) {
	i, ok := slices.BinarySearchFunc(w.at, key, func(a keyAt, k string) int { return strings.Compare(a.key, k) })
	if !ok {
		return keyAt{}, false
	}
	return w.at[i], true
}

// has reports whether key is written.
func (w *writtenKeys) has(key string) bool {
	if w.src != nil {
		_, ok := w.refs[key]
		return ok
	}
	_, ok := w.find(key)
	return ok
}

// line returns the line of key, or 0 when it is not written or its line is
// unknown.
func (w *writtenKeys) line(key string) int {
	if w.src != nil {
		if r, ok := w.refs[key]; ok {
			return w.src.line(r)
		}
		return 0
	}
	a, _ := w.find(key)
	return int(a.line)
}

// settle replaces the decoder's references by line numbers when the scanner
// indexed the file, so that the decoder's state can be let go.
func (w *writtenKeys) settle() {
	if w.src == nil || w.src.lines == nil {
		return
	}
	at := make([]keyAt, 0, len(w.refs))
	for k, r := range w.refs {
		at = append(at, keyAt{key: k, line: int32(w.src.line(r))})
	}
	slices.SortFunc(at, func(a, b keyAt) int { return strings.Compare(a.key, b.key) })
	*w = writtenKeys{at: at}
}

// settle lets go of the decoder's state wherever the lines of the keys are
// known without it (see writtenKeys). Called once, at the end of a
// successful Load.
func (c *Config) settle() {
	c.hbdKeys.settle()
	for _, s := range c.Services {
		s.keys.settle()
	}
}
