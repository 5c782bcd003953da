package api_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hbshim/hb/host/api"
)

// Wait for a service to come up, as `hbctl wait rx --up --timeout 10s` does.
func ExampleClient_Wait() {
	c := api.NewClient("/run/hb/hbd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Wait(ctx, "rx", true)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Printf("rx is still %s\n", st.State)
	case errors.Is(err, api.ErrNotFound):
		fmt.Println("no service rx")
	case errors.Is(err, api.ErrUnreachable):
		fmt.Println("hbd is not running:", err)
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Printf("rx is up, pid %d\n", st.PID)
	}
}

// Reject a reload with one line per configuration error (the manager's side).
func ExampleInvalidConfig() {
	cfgErr := errors.Join(
		errors.New(`hb.toml:12: service "rx": unknown key "comand"`),
		errors.New(`hb.toml:20: service "tx": command: empty`))
	err := api.InvalidConfig(cfgErr)
	fmt.Println(api.StatusOf(err))
	for _, l := range err.(api.Detailer).Details() {
		fmt.Println(l)
	}
	// Output:
	// 422
	// hb.toml:12: service "rx": unknown key "comand"
	// hb.toml:20: service "tx": command: empty
}
