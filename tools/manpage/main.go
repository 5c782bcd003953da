// Command manpage makes a man page of one of hb's Markdown reference
// documents (docs/hbd.md, docs/hbctl.md, host/config/reference.md), so that
// the man pages and the documents are one text:
//
//	go run ./tools/manpage -name hbd -section 8 -summary "the hb process-liveness shim" -in docs/hbd.md -out bin/man/hbd.8
//
// It rewrites what roff renders badly, then renders with go-md2man: the
// document's first heading becomes NAME (name \- summary) and, unless the
// document has a SYNOPSIS or DESCRIPTION section of its own (its
// introduction is then left out), DESCRIPTION;
// a table becomes a list of its rows (first cell as the tag, the others
// after it), which a terminal's width can wrap; a link to another document
// becomes its text.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"
)

func main() {
	name := flag.String("name", "", "page name (hbd)")
	section := flag.String("section", "", "manual section (8)")
	summary := flag.String("summary", "", "one line for NAME")
	in := flag.String("in", "", "Markdown source")
	out := flag.String("out", "", "man page to write")
	flag.Parse()
	if *name == "" || *section == "" || *summary == "" || *in == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: manpage -name N -section S -summary TEXT -in FILE.md -out FILE.S")
		os.Exit(2)
	}
	src, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "manpage:", err)
		os.Exit(1)
	}
	md, err := Convert(string(src), *name, *section, *summary)
	if err != nil {
		fmt.Fprintf(os.Stderr, "manpage: %s: %v\n", *in, err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, md2man.Render([]byte(md)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "manpage:", err)
		os.Exit(1)
	}
}

var (
	link     = regexp.MustCompile(`\[([^\]]+)\]\(([^)\s]+)\)`)
	tableSep = regexp.MustCompile(`^\|(\s*:?-+:?\s*\|)+\s*$`)
)

// Convert turns the Markdown document src into the Markdown go-md2man
// renders as the page name(section).
func Convert(src, name, section, summary string) (string, error) {
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	var b bytes.Buffer
	fmt.Fprintf(&b, "%% %s %s \"\" \"hb\" \"hb manual\"\n\n", strings.ToUpper(name), section)
	// A document written as a man page (## SYNOPSIS or ## DESCRIPTION of
	// its own) loses its introduction, which speaks of the document; any
	// other gets its introduction as DESCRIPTION.
	manStyle := false
	for _, l := range lines {
		if l == "## SYNOPSIS" || l == "## DESCRIPTION" {
			manStyle = true
		}
	}
	titled, fenced, skipping := false, false, false
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if skipping {
			if !strings.HasPrefix(l, "## ") {
				continue
			}
			skipping = false
		}
		if strings.HasPrefix(l, "```") {
			fenced = !fenced
			b.WriteString(l + "\n")
			continue
		}
		if fenced {
			b.WriteString(l + "\n")
			continue
		}
		if !titled && strings.HasPrefix(l, "# ") {
			titled = true
			fmt.Fprintf(&b, "# NAME\n\n%s \\- %s\n\n", name, summary)
			if manStyle {
				skipping = true
			} else {
				b.WriteString("# DESCRIPTION\n")
			}
			continue
		}
		// A table: a header row, a separator row, then rows.
		if strings.HasPrefix(l, "|") && i+1 < len(lines) && tableSep.MatchString(lines[i+1]) {
			head := cells(l)
			i += 2
			for ; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
				row := cells(lines[i])
				if len(row) == 0 {
					continue
				}
				var rest []string
				for j, c := range row[1:] {
					if c == "" {
						continue
					}
					h := ""
					if j+1 < len(head) {
						h = strings.ToLower(head[j+1])
					}
					if h == "meaning" || h == "" || j+2 == len(row) && len(row) > 2 {
						rest = append(rest, c)
					} else {
						rest = append(rest, h+": "+c)
					}
				}
				fmt.Fprintf(&b, "%s\n: %s\n\n", delink(row[0]), delink(strings.Join(rest, "; ")))
			}
			i--
			continue
		}
		b.WriteString(delink(l) + "\n")
	}
	if fenced {
		return "", fmt.Errorf("unterminated code block")
	}
	if !titled {
		return "", fmt.Errorf("no top-level heading (# Title) to make NAME of")
	}
	return b.String(), nil
}

// cells splits a table row "| a | b |" into its trimmed cells; a \| stays
// in its cell.
func cells(row string) []string {
	row = strings.TrimSpace(row)
	row = strings.TrimPrefix(row, "|")
	row = strings.TrimSuffix(row, "|")
	row = strings.ReplaceAll(row, `\|`, "\x00")
	var out []string
	for _, c := range strings.Split(row, "|") {
		out = append(out, strings.ReplaceAll(strings.TrimSpace(c), "\x00", "|"))
	}
	return out
}

// delink keeps a link's text; an absolute URL stays after it in <>.
func delink(s string) string {
	return link.ReplaceAllStringFunc(s, func(m string) string {
		p := link.FindStringSubmatch(m)
		if strings.Contains(p[2], "://") {
			return p[1] + " <" + p[2] + ">"
		}
		return p[1]
	})
}
