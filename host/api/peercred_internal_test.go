package api

import (
	"errors"
	"os"
	"slices"
	"testing"
)

func TestProcGroups(t *testing.T) {
	got, err := procGroups(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	var w []uint32
	for _, g := range want {
		w = append(w, uint32(g))
	}
	slices.Sort(got)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Errorf("procGroups = %v, want %v", got, w)
	}
	if _, err := procGroups(-1); err == nil {
		t.Error("procGroups(-1) succeeded")
	}
}

func TestPeerAllowed(t *testing.T) {
	const euid, gid = 1000, 4242
	tests := []struct {
		name string
		p    peer
		gid  int
		want bool
	}{
		{"root", peer{uid: 0, gid: 5}, -1, true},
		{"same uid", peer{uid: euid, gid: 5}, -1, true},
		{"other uid, no group configured", peer{uid: 2000, gid: gid, groups: []uint32{gid}}, -1, false},
		{"primary group", peer{uid: 2000, gid: gid}, gid, true},
		{"supplementary group", peer{uid: 2000, gid: 5, groups: []uint32{7, gid}}, gid, true},
		{"other groups", peer{uid: 2000, gid: 5, groups: []uint32{7}}, gid, false},
		{"no credentials", peer{err: errors.New("boom")}, gid, false},
	}
	for _, tc := range tests {
		if got := tc.p.allowed(euid, tc.gid) == nil; got != tc.want {
			t.Errorf("%s: allowed = %v, want %v", tc.name, got, tc.want)
		}
	}
}
