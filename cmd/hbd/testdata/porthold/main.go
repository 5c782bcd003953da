// Command porthold is a service for the cgroup fault tests: it listens on
// 127.0.0.1:PORT and starts a copy of itself that holds the same socket
// and outlives it, as a worker a server forks does.
//
//	porthold PORT PIDFILE   listen, start the holder, write "MAIN HOLDER" to PIDFILE, block
//	porthold hold           (the holder) block, with the socket as descriptor 3
//
// A listen that fails (the port is still held) exits 1 with the error.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "hold" {
		f := os.NewFile(3, "listener")
		defer f.Close()
		block()
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: porthold PORT PIDFILE | porthold hold")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "porthold:", err)
		os.Exit(1)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		fmt.Fprintln(os.Stderr, "porthold:", err)
		os.Exit(1)
	}
	exe, _ := os.Executable()
	p, err := os.StartProcess(exe, []string{exe, "hold"}, &os.ProcAttr{Files: []*os.File{nil, os.Stdout, os.Stderr, f}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "porthold:", err)
		os.Exit(1)
	}
	tmp := os.Args[2] + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+" "+strconv.Itoa(p.Pid)+"\n"), 0o644); err != nil {
		os.Exit(1)
	}
	if err := os.Rename(tmp, os.Args[2]); err != nil {
		os.Exit(1)
	}
	block()
}

func block() {
	for {
		time.Sleep(time.Hour)
	}
}
