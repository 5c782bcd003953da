package config

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// The TOML decoder does not export where keys are. hb finds them in two ways:
//
//   - scanKeys, a small scanner over a document the decoder has already
//     accepted, lists every key with its line in one pass. Its answer is used
//     only when its list of keys is exactly the decoder's (MetaData.Keys, same
//     paths, same order), which a misread string or array cannot pass.
//   - Otherwise (a construct the scanner does not follow), source.probe asks
//     the decoder itself: decoding a Primitive into linePin fails with a
//     ParseError positioned at the Primitive's key. That is exact but costs a
//     pass over the file per key, so it is the fallback.

// scanKeys returns the keys of doc in document order, as toml.MetaData.Keys
// lists them (table headers, then key paths, inline-table keys included), and
// the line of each. ok is false when doc holds something the scanner does not
// follow.
func scanKeys(doc string) (keys []toml.Key, lines []int, ok bool) {
	// Skip a byte order mark as the decoder does; lines are unchanged.
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if strings.HasPrefix(doc, bom) {
			doc = doc[len(bom):]
			break
		}
	}
	sc := &keyScanner{s: doc}
	for i := 0; i < len(doc); i++ {
		if doc[i] == '\n' {
			sc.nl = append(sc.nl, i)
		}
	}
	if !sc.document() {
		return nil, nil, false
	}
	return sc.keys, sc.lines, true
}

type keyScanner struct {
	s     string
	i     int
	nl    []int // offsets of '\n'
	keys  []toml.Key
	lines []int
}

func (sc *keyScanner) emit(k toml.Key, off int) {
	sc.keys = append(sc.keys, k)
	sc.lines = append(sc.lines, 1+sort.SearchInts(sc.nl, off))
}

func (sc *keyScanner) more() bool { return sc.i < len(sc.s) }

func (sc *keyScanner) has(prefix string) bool { return strings.HasPrefix(sc.s[sc.i:], prefix) }

// blanks skips spaces and tabs.
func (sc *keyScanner) blanks() {
	for sc.more() && (sc.s[sc.i] == ' ' || sc.s[sc.i] == '\t') {
		sc.i++
	}
}

// gap skips blanks, newlines and comments.
func (sc *keyScanner) gap() {
	for sc.more() {
		switch sc.s[sc.i] {
		case ' ', '\t', '\r', '\n':
			sc.i++
		case '#':
			for sc.more() && sc.s[sc.i] != '\n' {
				sc.i++
			}
		default:
			return
		}
	}
}

// endOfLine skips blanks and a comment and requires a newline or the end.
func (sc *keyScanner) endOfLine() bool {
	sc.blanks()
	if sc.more() && sc.s[sc.i] == '#' {
		for sc.more() && sc.s[sc.i] != '\n' {
			sc.i++
		}
	}
	if sc.has("\r\n") {
		sc.i += 2
		return true
	}
	if sc.has("\n") {
		sc.i++
		return true
	}
	return !sc.more()
}

func (sc *keyScanner) document() bool {
	var table toml.Key
	for {
		sc.gap()
		if !sc.more() {
			return true
		}
		start := sc.i
		if sc.s[sc.i] == '[' {
			closing := "]"
			if sc.has("[[") {
				closing = "]]"
			}
			sc.i += len(closing)
			k, ok := sc.key()
			if !ok || !sc.has(closing) {
				return false
			}
			sc.i += len(closing)
			table = k
			sc.emit(k, start)
			if !sc.endOfLine() {
				return false
			}
			continue
		}
		k, ok := sc.key()
		if !ok || !sc.has("=") {
			return false
		}
		sc.i++
		full := append(append(toml.Key{}, table...), k...)
		sc.emit(full, start)
		sc.blanks()
		if !sc.value(full) || !sc.endOfLine() {
			return false
		}
	}
}

// key reads a dotted key and the blanks after it.
func (sc *keyScanner) key() (toml.Key, bool) {
	var k toml.Key
	for {
		sc.blanks()
		if !sc.more() {
			return nil, false
		}
		var part string
		switch c := sc.s[sc.i]; {
		case c == '"':
			s, ok := sc.basicString()
			if !ok {
				return nil, false
			}
			part = s
		case c == '\'':
			end := strings.IndexAny(sc.s[sc.i+1:], "'\n")
			if end < 0 || sc.s[sc.i+1+end] != '\'' {
				return nil, false
			}
			part = sc.s[sc.i+1 : sc.i+1+end]
			sc.i += end + 2
		default:
			j := sc.i
			for j < len(sc.s) && isBareKeyByte(sc.s[j]) {
				j++
			}
			if j == sc.i {
				return nil, false
			}
			part = sc.s[sc.i:j]
			sc.i = j
		}
		k = append(k, part)
		sc.blanks()
		if !sc.has(".") {
			return k, true
		}
		sc.i++
	}
}

func isBareKeyByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value skips one value; inline-table keys are emitted under prefix.
func (sc *keyScanner) value(prefix toml.Key) bool {
	if !sc.more() {
		return false
	}
	switch {
	case sc.has(`"""`):
		return sc.multiline(`"""`, true)
	case sc.has(`'''`):
		return sc.multiline(`'''`, false)
	case sc.has(`"`):
		_, ok := sc.basicString()
		return ok
	case sc.has(`'`):
		end := strings.IndexAny(sc.s[sc.i+1:], "'\n")
		if end < 0 || sc.s[sc.i+1+end] != '\'' {
			return false
		}
		sc.i += end + 2
		return true
	case sc.has("["):
		sc.i++
		for {
			sc.gap()
			if !sc.more() {
				return false
			}
			if sc.s[sc.i] == ']' {
				sc.i++
				return true
			}
			if !sc.value(prefix) {
				return false
			}
			sc.gap()
			if sc.has(",") {
				sc.i++
			} else if !sc.has("]") {
				return false
			}
		}
	case sc.has("{"):
		sc.i++
		for {
			sc.gap()
			if !sc.more() {
				return false
			}
			if sc.s[sc.i] == '}' {
				sc.i++
				return true
			}
			start := sc.i
			k, ok := sc.key()
			if !ok || !sc.has("=") {
				return false
			}
			sc.i++
			full := append(append(toml.Key{}, prefix...), k...)
			sc.emit(full, start)
			sc.blanks()
			if !sc.value(full) {
				return false
			}
			sc.gap()
			if sc.has(",") {
				sc.i++
			} else if !sc.has("}") {
				return false
			}
		}
	}
	// A number, boolean, date or time: up to a delimiter. (A date and time
	// may hold one space; trailing blanks are left for the caller.)
	j := sc.i
	for j < len(sc.s) && !strings.ContainsRune(",]}#\r\n", rune(sc.s[j])) {
		j++
	}
	if strings.TrimRight(sc.s[sc.i:j], " \t") == "" {
		return false
	}
	sc.i = j
	return true
}

// multiline skips a """ or ”' string.
func (sc *keyScanner) multiline(delim string, escapes bool) bool {
	sc.i += 3
	for sc.more() {
		switch {
		case escapes && sc.s[sc.i] == '\\':
			sc.i += 2
		case sc.has(delim):
			sc.i += 3
			// Up to two more quotes belong to the content: """a"""" is `a"`.
			for n := 0; n < 2 && sc.more() && sc.s[sc.i] == delim[0]; n++ {
				sc.i++
			}
			return true
		default:
			sc.i++
		}
	}
	return false
}

// basicString reads a "..." string and returns it unescaped.
func (sc *keyScanner) basicString() (string, bool) {
	var b strings.Builder
	j := sc.i + 1
	for j < len(sc.s) {
		c := sc.s[j]
		switch c {
		case '"':
			sc.i = j + 1
			return b.String(), true
		case '\n':
			return "", false
		case '\\':
			if j+1 >= len(sc.s) {
				return "", false
			}
			e := sc.s[j+1]
			j += 2
			switch e {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case 'e':
				b.WriteByte(0x1b)
			case '"', '\\':
				b.WriteByte(e)
			case 'x', 'u', 'U':
				n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
				if j+n > len(sc.s) {
					return "", false
				}
				r, err := strconv.ParseUint(sc.s[j:j+n], 16, 32)
				if err != nil || !utf8.ValidRune(rune(r)) {
					return "", false
				}
				b.WriteRune(rune(r))
				j += n
			default:
				return "", false
			}
		default:
			b.WriteByte(c)
			j++
		}
	}
	return "", false
}

// keyLines indexes the lines found by scanKeys: explicit keys by their
// toml.Key string, and every table only implied by its sub-keys at its first
// sub-key.
type keyLines map[string]int

// newKeyLines returns the index for doc when the scan agrees with the
// decoder's keys, or nil.
func newKeyLines(doc string, md toml.MetaData) keyLines {
	keys, lines, ok := scanKeys(doc)
	want := md.Keys()
	if !ok || len(keys) != len(want) {
		return nil
	}
	for i := range keys {
		if !equalKey(keys[i], want[i]) {
			return nil
		}
	}
	idx := make(keyLines, 2*len(keys))
	for i, k := range keys {
		if _, dup := idx[k.String()]; !dup {
			idx[k.String()] = lines[i]
		}
	}
	for i, k := range keys {
		for n := 1; n < len(k); n++ {
			p := k[:n].String()
			if _, ok := idx[p]; !ok {
				idx[p] = lines[i]
			}
		}
	}
	return idx
}

func equalKey(a, b toml.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
