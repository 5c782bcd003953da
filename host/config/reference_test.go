package config

import (
	"os"
	"strings"
	"testing"
)

// TestReferenceDocumentsEveryKey: reference.md, which is also the man page
// hb.toml(5), has a table row for every key the loader accepts.
func TestReferenceDocumentsEveryKey(t *testing.T) {
	doc, err := os.ReadFile("reference.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, keys := range [][]string{hbdKeyNames, serviceKeyNames} {
		for _, k := range keys {
			if !strings.Contains(string(doc), "| `"+k+"` |") {
				t.Errorf("reference.md has no row for key %q", k)
			}
		}
	}
}
