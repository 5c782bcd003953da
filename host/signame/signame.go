// Package signame is hb's one rule for naming signals: how stop_signal,
// the control API's signal body and hbctl kill spell a signal, and how hb
// prints one.
package signame

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Max is the highest signal number Linux delivers (SIGRTMAX).
const Max = 64

// ErrSyntax is matched by every error Parse returns.
var ErrSyntax = errors.New("bad signal")

// Parse reads a signal spelt exactly as hb accepts one: a name with or
// without the SIG prefix, in any case ("TERM", "SIGTERM", "term"), or a
// decimal number 1..Max with no sign and no leading zero. Nothing else is
// accepted: no surrounding or inner space, no "+9", no "09", no "SIGRTMIN+1".
func Parse(s string) (syscall.Signal, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: empty signal (use a name such as \"TERM\", \"HUP\", or a number)", ErrSyntax)
	}
	if s[0] >= '0' && s[0] <= '9' {
		if !allDigits(s) || (len(s) > 1 && s[0] == '0') {
			return 0, fmt.Errorf("%w: %q is not a signal number (digits only, no sign, space or leading zero)", ErrSyntax, s)
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > Max {
			return 0, fmt.Errorf("%w: signal %s is out of range 1..%d", ErrSyntax, s, Max)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	for _, c := range name {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return 0, fmt.Errorf("%w: %q is not a signal name (letters and digits only, e.g. \"TERM\")", ErrSyntax, s)
		}
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q (use a name such as \"TERM\", \"INT\", \"HUP\", or a number)", ErrSyntax, s)
}

// Name returns "HUP" for SIGHUP, or the number for a signal without a name.
func Name(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return strings.TrimPrefix(n, "SIG")
	}
	return strconv.Itoa(int(sig))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
