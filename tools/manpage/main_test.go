package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cpuguy83/go-md2man/v2/md2man"
)

func TestConvert(t *testing.T) {
	src := "# Title\n\nIntro [see](../x.md) and [site](https://example.org).\n\n" +
		"| key | type | default | meaning |\n|---|---|---|---|\n| `a` | string | `\"\"` | the a \\| b key |\n\n" +
		"```\n| not | a | table |\n# not a title\n```\n"
	got, err := Convert(src, "x.conf", "5", "x's configuration")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"% X.CONF 5", "# NAME\n\nx.conf \\- x's configuration\n\n# DESCRIPTION\n",
		"Intro see and site <https://example.org>.",
		"`a`\n: type: string; default: `\"\"`; the a | b key\n",
		"```\n| not | a | table |\n# not a title\n```\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Convert lacks %q:\n%s", want, got)
		}
	}
	manStyle, err := Convert("# T\n\nAbout this page.\n\n## SYNOPSIS\n\n`t`\n", "t", "8", "t")
	if err != nil || strings.Contains(manStyle, "About this page") || strings.Count(manStyle, "DESCRIPTION") != 0 {
		t.Errorf("a man-style document keeps its introduction or gets a DESCRIPTION: %q, %v", manStyle, err)
	}
	if _, err := Convert("no title\n", "t", "8", "t"); err == nil {
		t.Error("a document without a title converts")
	}
}

// TestPagesRender: hb's three pages render with man -l without a warning
// (where man is installed).
func TestPagesRender(t *testing.T) {
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man is not installed (Debian: man-db)")
	}
	dir := t.TempDir()
	for _, p := range []struct{ name, section, in string }{
		{"hbd", "8", "../../docs/hbd.md"},
		{"hbctl", "8", "../../docs/hbctl.md"},
		{"hb.toml", "5", "../../host/config/reference.md"},
	} {
		src, err := os.ReadFile(p.in)
		if err != nil {
			t.Fatal(err)
		}
		md, err := Convert(string(src), p.name, p.section, "summary")
		if err != nil {
			t.Fatalf("%s: %v", p.in, err)
		}
		page := filepath.Join(dir, p.name+"."+p.section)
		if err := os.WriteFile(page, md2man.Render([]byte(md)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("man", "--warnings", "-l", page)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Errorf("man -l %s: %v\n%s", page, err, stderr.String())
		}
		if !strings.Contains(string(out), "NAME") || !strings.Contains(string(out), strings.ToUpper(p.name)+"("+p.section+")") {
			t.Errorf("man -l %s: no NAME or title:\n%.400s", page, out)
		}
	}
}
