package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	hbpb "github.com/hbshim/hb/plugin/proto"
	"github.com/hbshim/hb/shm"
)

// eventsHeader is the response header the server sends once an Events
// subscription exists; its presence tells the client the stream started.
const eventsHeader = "hb-events"

// eventBuffer is the capacity of the channel Events returns. The stream's
// own flow control is the real buffer; this one only decouples the reader.
const eventBuffer = 64

// grpcClient is the host's Shim: every call is an RPC to the plugin process.
// It is safe for concurrent use.
type grpcClient struct {
	conn *grpc.ClientConn
	rpc  hbpb.ShimClient
	// done is cancelled by go-plugin when the plugin process exits; Events
	// streams end with it.
	done context.Context
}

var _ Shim = (*grpcClient)(nil)

func newGRPCClient(done context.Context, conn *grpc.ClientConn) *grpcClient {
	if done == nil {
		done = context.Background()
	}
	return &grpcClient{conn: conn, rpc: hbpb.NewShimClient(conn), done: done}
}

// fail maps an RPC error. A call on a connection the host has closed
// (Detach, Kill) fails with ErrUnavailable, not as a cancellation.
func (c *grpcClient) fail(method string, err error) error {
	if err == nil {
		return nil
	}
	if status.Code(err) == codes.Canceled && c.conn.GetState() == connectivity.Shutdown {
		return fmt.Errorf("plugin: %s: %w: connection closed", method, ErrUnavailable)
	}
	return fromStatus(method, err)
}

func (c *grpcClient) Info(ctx context.Context) (Info, error) {
	resp, err := c.rpc.Info(ctx, &hbpb.InfoRequest{})
	if err != nil {
		return Info{}, c.fail("Info", err)
	}
	return infoFromProto(resp), nil
}

func (c *grpcClient) Spawn(ctx context.Context, spec Spec) (SpawnResult, error) {
	resp, err := c.rpc.Spawn(ctx, &hbpb.SpawnRequest{Spec: specToProto(spec)})
	if err != nil {
		return SpawnResult{}, c.fail("Spawn", err)
	}
	return spawnResultFromProto(resp), nil
}

// SpawnMany asks a plugin of FeatureSpawnMany or later (an older one
// answers Unimplemented) to start every spec. A failed call fails every
// spec with its error.
func (c *grpcClient) SpawnMany(ctx context.Context, specs []Spec) ([]SpawnOutcome, error) {
	req := &hbpb.SpawnManyRequest{Specs: make([]*hbpb.Spec, len(specs))}
	for i, spec := range specs {
		req.Specs[i] = specToProto(spec)
	}
	resp, err := c.rpc.SpawnMany(ctx, req)
	if err != nil {
		return nil, c.fail("SpawnMany", err)
	}
	if len(resp.GetOutcomes()) != len(specs) {
		return nil, fmt.Errorf("plugin: SpawnMany: %d outcomes for %d specs", len(resp.GetOutcomes()), len(specs))
	}
	outs := make([]SpawnOutcome, len(specs))
	for i, o := range resp.GetOutcomes() {
		if o.GetErrorCode() != 0 {
			outs[i].Err = errorFromOutcome(o.GetErrorCode(), o.GetError(), o.GetErrorReason())
			continue
		}
		outs[i].Result = spawnResultFromProto(o.GetResult())
	}
	return outs, nil
}

func (c *grpcClient) Stop(ctx context.Context, name string, sig syscall.Signal, timeout time.Duration) error {
	_, err := c.rpc.Stop(ctx, &hbpb.StopRequest{Name: name, Signal: int32(sig), TimeoutNs: int64(timeout)})
	return c.fail("Stop", err)
}

func (c *grpcClient) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	_, err := c.rpc.Signal(ctx, &hbpb.SignalRequest{Name: name, Signal: int32(sig)})
	return c.fail("Signal", err)
}

func (c *grpcClient) SetState(ctx context.Context, name string, st shm.State, gen uint64) error {
	_, err := c.rpc.SetState(ctx, &hbpb.SetStateRequest{Name: name, State: hbpb.ServiceState(st), Generation: gen})
	return c.fail("SetState", err)
}

func (c *grpcClient) Free(ctx context.Context, name string) error {
	_, err := c.rpc.Free(ctx, &hbpb.FreeRequest{Name: name})
	return c.fail("Free", err)
}

func (c *grpcClient) List(ctx context.Context) ([]shm.Slot, error) {
	resp, err := c.rpc.List(ctx, &hbpb.ListRequest{})
	if err != nil {
		return nil, c.fail("List", err)
	}
	slots := make([]shm.Slot, len(resp.GetSlots()))
	for i, s := range resp.GetSlots() {
		slots[i] = slotFromProto(s)
	}
	return slots, nil
}

// Events subscribes and returns once the plugin has accepted the
// subscription, so a refusal is returned here rather than as an empty
// channel. A goroutine then forwards the stream; it closes the channel when
// the stream ends: ctx done, plugin shut down or gone.
func (c *grpcClient) Events(ctx context.Context, afterSeq uint64) (<-chan Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	unjoin := context.AfterFunc(c.done, cancel)
	release := func() {
		unjoin()
		cancel()
	}
	stream, err := c.rpc.Events(ctx, &hbpb.EventsRequest{AfterSeq: afterSeq})
	if err != nil {
		release()
		return nil, c.fail("Events", err)
	}
	md, err := stream.Header()
	if err != nil {
		release()
		return nil, c.fail("Events", err)
	}
	if len(md.Get(eventsHeader)) == 0 {
		// Terminated without headers: the status says why.
		_, err := stream.Recv()
		release()
		if err == nil || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("plugin: Events: %w: stream ended before it started", ErrUnavailable)
		}
		return nil, c.fail("Events", err)
	}
	ch := make(chan Event, eventBuffer)
	go func() {
		defer close(ch)
		defer release()
		for {
			pe, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- eventFromProto(pe):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

func (c *grpcClient) Bridge(ctx context.Context, specs []BridgeSpec, reserved []string) error {
	_, err := c.rpc.Bridge(ctx, &hbpb.BridgeRequest{Programs: bridgeToProto(specs), Reserved: reserved})
	return c.fail("Bridge", err)
}

func (c *grpcClient) Bridged(ctx context.Context) ([]BridgeSpec, error) {
	resp, err := c.rpc.Bridged(ctx, &hbpb.BridgedRequest{})
	if err != nil {
		return nil, c.fail("Bridged", err)
	}
	return bridgeFromProto(resp.GetPrograms()), nil
}

func (c *grpcClient) Shutdown(ctx context.Context, clean bool) error {
	_, err := c.rpc.Shutdown(ctx, &hbpb.ShutdownRequest{Clean: clean})
	return c.fail("Shutdown", err)
}
