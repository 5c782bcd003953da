// Command plugincall is the fault suite's stand-in for a local user who
// found the plugin's socket: it connects to it and asks the plugin to run a
// command (Spawn), as hbd would. It prints what happened and exits 0 only
// if the plugin ran the command.
//
//	plugincall SOCKET NAME COMMAND [ARG...]
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	hbpb "github.com/hbshim/hb/plugin/proto"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: plugincall SOCKET NAME COMMAND [ARG...]")
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := hbpb.NewShimClient(conn).Spawn(ctx, &hbpb.SpawnRequest{Spec: &hbpb.Spec{
		Name:    os.Args[2],
		Command: os.Args[3:],
		Uid:     -1,
		Gid:     -1,
		Stdout:  "null",
		Stderr:  "null",
	}})
	if err != nil {
		fmt.Println("spawn refused:", err)
		os.Exit(1)
	}
	fmt.Printf("spawned pid %d in slot %d\n", res.GetPid(), res.GetSlot())
}
