package config

import "strings"

// settle lets go of the decoder's state wherever the lines of the keys are
// known without it (see writtenKeys). Called once, at the end of a
// successful Load.
func (c *Config) settle() {
	c.hbdKeys.settle()
	for _, s := range c.Services {
		s.keys.settle()
	}
}

// compact moves what a loaded Config keeps into a few large blocks: one for
// every string, one for every command line, one for the exit codes and one
// for the keys' lines. Called once, at the end of a successful Load, after
// settle.
//
// Decoding a file makes far more objects than the Config keeps (some hundred
// thousand short-lived ones for a thousand services), and the few that stay,
// a name, an argument list and a handful of short strings per service, would
// each keep the page it shares with those that went in use: about 2 MiB of
// pages held for some 100 KiB at a thousand services, for as long as hbd
// runs. Copied together, they take what they need. The copy also stops
// decoded strings from pinning the file's whole text (they are slices of
// it), and a string repeated across services (a file name, a command, an
// output mode) is kept once.
//
// A slice carved from a block has its capacity equal to its length, so an
// append by a caller copies instead of writing over a neighbour.
func (c *Config) compact() {
	var p stringPacker
	c.packStrings(p.add, false)
	p.seal()
	c.packStrings(p.get, true)

	// Rebuild the map of services: its keys are the old strings.
	svcs := make(map[string]*Service, len(c.Services))
	var nargs, ncodes, nkeys int
	for _, s := range c.Services {
		svcs[s.Name] = s
		nargs += len(s.Command)
		ncodes += len(s.ExitCodes)
		nkeys += len(s.keys.at)
	}
	c.Services = svcs
	args := make([]string, 0, nargs)
	codes := make([]int, 0, ncodes)
	keys := make([]keyAt, 0, nkeys+len(c.hbdKeys.at))
	for _, name := range c.Order {
		s := c.Services[name]
		s.Command, args = carve(s.Command, args)
		s.ExitCodes, codes = carve(s.ExitCodes, codes)
		s.keys.at, keys = carve(s.keys.at, keys)
	}
	c.hbdKeys.at, _ = carve(c.hbdKeys.at, keys)
}

// carve appends v to block and returns the copy, with no room to grow, and
// the block. An empty v is returned as it is (nil stays nil).
func carve[T any](v, block []T) ([]T, []T) {
	if len(v) == 0 {
		return v, block
	}
	start := len(block)
	block = append(block, v...)
	return block[start:len(block):len(block)], block
}

// packStrings replaces every string c keeps by f(string). With rebuild,
// the Environment maps are made anew (an empty one becomes nil), since their
// keys cannot be replaced in place; without, f only sees their strings.
func (c *Config) packStrings(f func(string) string, rebuild bool) {
	c.Path = f(c.Path)
	for i := range c.Files {
		c.Files[i] = f(c.Files[i])
	}
	h := &c.HBD
	for _, p := range []*string{&h.Shm, &h.Socket, &h.StateDir, &h.LogDir, &h.Detector, &h.SocketGroup} {
		*p = f(*p)
	}
	for i := range c.hbdKeys.at {
		c.hbdKeys.at[i].key = f(c.hbdKeys.at[i].key)
	}
	for i := range c.Order {
		c.Order[i] = f(c.Order[i])
	}
	for _, s := range c.Services {
		for _, p := range []*string{&s.Name, &s.File, &s.Directory, &s.User, &s.Group, &s.Stdout, &s.Stderr} {
			*p = f(*p)
		}
		for i := range s.Command {
			s.Command[i] = f(s.Command[i])
		}
		for i := range s.keys.at {
			s.keys.at[i].key = f(s.keys.at[i].key)
		}
		if !rebuild {
			for k, v := range s.Environment {
				f(k)
				f(v)
			}
			continue
		}
		if len(s.Environment) == 0 {
			s.Environment = nil
			continue
		}
		env := make(map[string]string, len(s.Environment))
		for k, v := range s.Environment {
			env[f(k)] = f(v)
		}
		s.Environment = env
	}
}

// stringPacker copies strings into one block: add every string (the first
// pass), seal, then get each one's copy (the second pass). Equal strings
// share their copy.
type stringPacker struct {
	at    map[string]int // offset of each distinct string in block
	order []string       // distinct strings in the order added
	size  int
	block string
}

func (p *stringPacker) add(s string) string {
	if s == "" {
		return s
	}
	if p.at == nil {
		p.at = map[string]int{}
	}
	if _, ok := p.at[s]; !ok {
		p.at[s] = p.size
		p.order = append(p.order, s)
		p.size += len(s)
	}
	return s
}

func (p *stringPacker) seal() {
	var b strings.Builder
	b.Grow(p.size)
	for _, s := range p.order {
		b.WriteString(s)
	}
	p.block, p.order = b.String(), nil
}

func (p *stringPacker) get(s string) string {
	if s == "" {
		return s
	}
	off := p.at[s]
	return p.block[off : off+len(s)]
}
