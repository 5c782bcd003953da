package plugin

import (
	"slices"
	"testing"
	"unsafe"
)

// sameString reports whether a and b share their bytes.
func sameString(a, b string) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.StringData(a) == unsafe.StringData(b))
}

// fresh returns copies of env's strings, as decoding a Spec makes them.
func fresh(env []string) []string {
	out := make([]string, len(env), len(env)+3)
	for i, kv := range env {
		out[i] = string([]byte(kv))
	}
	return out
}

func TestSpecStoreShares(t *testing.T) {
	base := []string{"PATH=/bin", "HOME=/root", "LANG=C"}
	other := []string{"PATH=/bin", "HOME=/home/rx", "LANG=C", "X=1"}
	var st specStore

	first := Spec{Env: fresh(base), LogDir: string([]byte("/var/log/hb"))}
	st.share(&first)
	if !slices.Equal(first.Env, base) || cap(first.Env) != len(base) {
		t.Fatalf("first Env = %q (cap %d); want %q, exactly sized", first.Env, cap(first.Env), base)
	}

	// An equal environment is replaced by the stored one: one slice.
	second := Spec{Env: fresh(base), LogDir: string([]byte("/var/log/hb"))}
	st.share(&second)
	if &second.Env[0] != &first.Env[0] {
		t.Error("an equal environment was not shared")
	}
	if !sameString(second.LogDir, first.LogDir) {
		t.Error("an equal LogDir was not shared")
	}

	// A different one keeps its values and reuses the strings in common.
	third := Spec{Env: fresh(other), LogDir: "/elsewhere"}
	st.share(&third)
	if !slices.Equal(third.Env, other) {
		t.Fatalf("different Env = %q; want %q", third.Env, other)
	}
	for i, j := range map[int]int{0: 0, 2: 2} {
		if !sameString(third.Env[i], first.Env[j]) {
			t.Errorf("variable %q in common was not shared", third.Env[i])
		}
	}
	if third.LogDir != "/elsewhere" {
		t.Errorf("LogDir = %q", third.LogDir)
	}

	// Empty and nil environments stay empty.
	for _, env := range [][]string{nil, {}} {
		sp := Spec{Env: env}
		st.share(&sp)
		if len(sp.Env) != 0 {
			t.Errorf("Env %q became %q", env, sp.Env)
		}
	}
}
