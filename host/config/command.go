package config

import (
	"fmt"
	"strings"
)

// splitCommand splits a command line into argv the way a POSIX shell splits
// words, without running one: blanks separate words; 'single quotes' keep
// everything literally; "double quotes" keep everything but \" \\ \$ \`
// and backslash-newline; outside quotes a backslash keeps the next character
// (backslash-newline joins lines). Nothing is expanded: globs, ~ and braces
// are passed as written. Shell syntax whose meaning would be lost — the
// operators | & ; < > ( ), `...`, and $ outside single quotes — is an error,
// so that "rx > log" or "rx --port $PORT" fails loudly instead of passing
// ">" or "$PORT" as arguments.
func splitCommand(line string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool
	)
	end := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(line); {
		c := line[i]
		switch c {
		case ' ', '\t', '\n', '\r':
			end()
			i++
		case '\\':
			if i+1 >= len(line) {
				return nil, valueErr("command ends with a backslash")
			}
			if line[i+1] != '\n' {
				cur.WriteByte(line[i+1])
				inWord = true
			}
			i += 2
		case '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, valueErr("unterminated ' opened at column %d", i+1)
			}
			cur.WriteString(line[i+1 : i+1+j])
			inWord = true
			i += j + 2
		case '"':
			open := i
			inWord = true
			i++
			closed := false
			for i < len(line) && !closed {
				c := line[i]
				switch {
				case c == '"':
					closed = true
					i++
				case c == '\\' && i+1 < len(line) && strings.IndexByte("\"\\$`\n", line[i+1]) >= 0:
					if line[i+1] != '\n' {
						cur.WriteByte(line[i+1])
					}
					i += 2
				case c == '$' || c == '`':
					return nil, shellSyntax(c, i)
				default:
					cur.WriteByte(c)
					i++
				}
			}
			if !closed {
				return nil, valueErr("unterminated \" opened at column %d", open+1)
			}
		case '|', '&', ';', '<', '>', '(', ')', '`', '$':
			return nil, shellSyntax(c, i)
		default:
			cur.WriteByte(c)
			inWord = true
			i++
		}
	}
	end()
	return words, nil
}

func shellSyntax(c byte, i int) error {
	return valueErr("%q at column %d needs a shell, and hb runs the command without one: "+
		"quote it with '...', or write command = [\"/bin/sh\", \"-c\", \"...\"]", string(c), i+1)
}

// quoteCommand is the inverse of splitCommand, for messages.
func quoteCommand(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && !strings.ContainsAny(a, " \t\n\r\\'\"|&;<>()`$") {
			b.WriteString(a)
			continue
		}
		fmt.Fprintf(&b, "'%s'", strings.ReplaceAll(a, "'", `'\''`))
	}
	return b.String()
}
