package signame

import (
	"errors"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want syscall.Signal
	}{
		{"TERM", syscall.SIGTERM}, {"SIGTERM", syscall.SIGTERM}, {"term", syscall.SIGTERM},
		{"sigkill", syscall.SIGKILL}, {"HUP", syscall.SIGHUP}, {"USR2", syscall.SIGUSR2},
		{"9", syscall.SIGKILL}, {"15", syscall.SIGTERM}, {"34", syscall.Signal(34)}, {"64", syscall.Signal(64)},
	}
	for _, tc := range good {
		if got, err := Parse(tc.in); err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	bad := []string{"", " ", "9 ", " 9", "+9", "-9", "09", "0", "65", "1e1", "9\n", "SIG", "TREM",
		" TERM", "TERM ", "TE RM", "SIGRTMIN+1", "KILL\x00", "१"}
	for _, in := range bad {
		got, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want an error", in, got)
		} else if !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) error %v does not match ErrSyntax", in, err)
		}
	}
}

func TestName(t *testing.T) {
	for sig, want := range map[syscall.Signal]string{syscall.SIGUSR2: "USR2", syscall.SIGKILL: "KILL", 40: "40"} {
		if got := Name(sig); got != want {
			t.Errorf("Name(%d) = %q, want %q", sig, got, want)
		}
		if back, err := Parse(Name(sig)); err != nil || back != sig {
			t.Errorf("Parse(Name(%d)) = %v, %v", sig, back, err)
		}
	}
}
