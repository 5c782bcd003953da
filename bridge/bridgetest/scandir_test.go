package bridgetest

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recorder is a TB whose Errorf is kept, not reported.
type recorder struct {
	*testing.T
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestRescanSaysHowTheScannerEnded: when s6-svscan is not listening
// because it died, the error says how it died and shows its log, so a
// failing bridge test is explained.
func TestRescanSaysHowTheScannerEnded(t *testing.T) {
	r := &recorder{T: t}
	scan := S6Svscan(r)
	if err := syscall.Kill(scan.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500 && alive(scan.PID()); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	scan.Add("prog", RunScript("sleep 1000"), Rename)
	if len(r.errs) != 1 {
		t.Fatalf("errors %q, want one", r.errs)
	}
	for _, want := range []string{"not listening", "exited, killed by killed", "its log ends"} {
		if !strings.Contains(r.errs[0], want) {
			t.Errorf("the error %q does not say %q", r.errs[0], want)
		}
	}
}
