package ctl

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Shell completion: `hbctl completion bash|zsh|fish` prints a script that
// completes hbctl's commands and each command's flags (both taken from the
// command table, so the script matches the hbctl that printed it) and, for
// the commands that take service names, the names the running hbd has: the
// script runs `hbctl [-s SOCKET] __services`, which prints them one a line
// and nothing when hbd cannot be reached.

// takesServices are the commands whose arguments are service names.
var takesServices = []string{"status", "start", "stop", "restart", "watch", "wait", "logs", "signal"}

// flagNames are cmd's flags as --name, sorted, the global ones included.
func flagNames(cmd *command) []string {
	var o opts
	fs := newFlagSet("hbctl "+cmd.name, &o)
	if cmd.flags != nil {
		cmd.flags(fs, &o)
	}
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "path" || len(f.Name) == 1 {
			return // hidden (tests), or a short form
		}
		names = append(names, "--"+f.Name)
	})
	slices.Sort(names)
	return names
}

// visible are the commands a user is offered (not the hidden ones).
func visible() []*command {
	var out []*command
	for _, c := range commands {
		if !strings.HasPrefix(c.name, "__") {
			out = append(out, c)
		}
	}
	return out
}

func runCompletion(_ context.Context, c *cli, args []string) int {
	if len(args) != 1 {
		return c.usageErr(c.cmd, "name one shell: bash, zsh or fish")
	}
	switch args[0] {
	case "bash":
		writeBash(c.Stdout)
	case "zsh":
		writeZsh(c.Stdout)
	case "fish":
		writeFish(c.Stdout)
	default:
		return c.usageErr(c.cmd, fmt.Sprintf("unknown shell %q (bash, zsh or fish)", args[0]))
	}
	return ExitOK
}

// runServices prints the service names, one a line, for the completion
// scripts; nothing, and exit 3, when hbd cannot be reached.
func runServices(ctx context.Context, c *cli, _ []string) int {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	sts, err := c.client.List(ctx)
	if err != nil {
		return ExitUnreachable
	}
	for _, st := range sts {
		fmt.Fprintln(c.Stdout, st.Name)
	}
	return ExitOK
}

func commandNames() string {
	var names []string
	for _, c := range visible() {
		names = append(names, c.name)
	}
	return strings.Join(names, " ")
}

func writeBash(w io.Writer) {
	fmt.Fprintf(w, `# bash completion for hbctl; made by: hbctl completion bash
_hbctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local i cmd="" sock=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -s|--socket) sock=(-s "${COMP_WORDS[i+1]}"); ((i++)) ;;
            -*) ;;
            *) [[ -z $cmd ]] && cmd=${COMP_WORDS[i]} ;;
        esac
    done
    case $prev in
        -s|--socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "%s --socket --help --version" -- "$cur"))
        return
    fi
    local flags=""
    case $cmd in
`, commandNames())
	for _, c := range visible() {
		fmt.Fprintf(w, "        %s) flags=%q ;;\n", c.name, strings.Join(flagNames(c), " "))
	}
	fmt.Fprintf(w, `    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    case $cmd in
        %s)
            COMPREPLY=($(compgen -W "$(hbctl "${sock[@]}" __services 2>/dev/null)" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")) ;;
        help) COMPREPLY=($(compgen -W "%s" -- "$cur")) ;;
    esac
}
complete -F _hbctl hbctl
`, strings.Join(takesServices, "|"), commandNames())
}

func writeZsh(w io.Writer) {
	fmt.Fprintf(w, `#compdef hbctl
# zsh completion for hbctl; made by: hbctl completion zsh. Install it as
# _hbctl in a directory of $fpath, or source it after compinit.
_hbctl() {
    local -a sock
    local i cmd=""
    for ((i = 2; i < CURRENT; i++)); do
        case ${words[i]} in
            -s|--socket) sock=(-s "${words[i+1]}"); ((i++)) ;;
            -*) ;;
            *) [[ -z $cmd ]] && cmd=${words[i]} ;;
        esac
    done
    if [[ -z $cmd ]]; then
        compadd -- %s --socket --help --version
        return
    fi
    if [[ ${words[CURRENT]} == -* ]]; then
        case $cmd in
`, commandNames())
	for _, c := range visible() {
		fmt.Fprintf(w, "            %s) compadd -- %s ;;\n", c.name, strings.Join(flagNames(c), " "))
	}
	fmt.Fprintf(w, `        esac
        return
    fi
    case $cmd in
        %s) compadd -- ${(f)"$(hbctl $sock __services 2>/dev/null)"} ;;
        completion) compadd -- bash zsh fish ;;
        help) compadd -- %s ;;
    esac
}
if [[ ${funcstack[1]} == _hbctl ]]; then
    _hbctl "$@"     # autoloaded from $fpath
elif (( $+functions[compdef] )); then
    compdef _hbctl hbctl
fi
`, strings.Join(takesServices, "|"), commandNames())
}

func writeFish(w io.Writer) {
	fmt.Fprintf(w, `# fish completion for hbctl; made by: hbctl completion fish
function __hbctl_services
    set -l tok (commandline -opc)
    set -l sock
    for i in (seq (count $tok))
        if contains -- $tok[$i] -s --socket; and test $i -lt (count $tok)
            set sock -s $tok[(math $i + 1)]
        end
    end
    hbctl $sock __services 2>/dev/null
end
complete -c hbctl -f
complete -c hbctl -n __fish_use_subcommand -a %q
complete -c hbctl -s s -l socket -r -F -d "hbd's control socket"
complete -c hbctl -n __fish_use_subcommand -l version -d "print hbctl's version"
complete -c hbctl -n "__fish_seen_subcommand_from %s" -a "(__hbctl_services)"
complete -c hbctl -n "__fish_seen_subcommand_from completion" -a "bash zsh fish"
complete -c hbctl -n "__fish_seen_subcommand_from help" -a %q
`, commandNames(), strings.Join(takesServices, " "), commandNames())
	for _, c := range visible() {
		for _, f := range flagNames(c) {
			if f == "--socket" {
				continue
			}
			fmt.Fprintf(w, "complete -c hbctl -n \"__fish_seen_subcommand_from %s\" -l %s\n", c.name, strings.TrimPrefix(f, "--"))
		}
	}
}
