package plugin

import (
	"context"
	"errors"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	hbpb "github.com/hbshim/hb/plugin/proto"
)

// Handshake is shared by hbd and the plugin it starts. ProtocolVersion changes
// whenever hb.proto changes incompatibly; a plugin of another version is not
// reattached. The cookie only tells a plugin binary run by hand that it was
// not started by hbd; it is not a secret.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "HB_PLUGIN",
	MagicCookieValue: "fa23ad95ef87e02df564e42120aaeca8",
}

// PluginName is the key of the shim in the plugin set.
const PluginName = "shim"

// PluginMap is the plugin set the host hands to go-plugin (client side). The
// server side builds the same set around its implementation in Serve.
var PluginMap = pluginSet(nil, nil)

// pluginSet is the single definition of the plugin set: impl and srv are nil
// on the host; in the plugin, srv is the adapter Serve waits on.
func pluginSet(impl Shim, srv *grpcServer) goplugin.PluginSet {
	return goplugin.PluginSet{PluginName: &ShimPlugin{Impl: impl, server: srv}}
}

// ShimPlugin is the go-plugin GRPCPlugin for the Shim service. Impl is used
// only in the plugin process; the host leaves it nil.
type ShimPlugin struct {
	goplugin.NetRPCUnsupportedPlugin

	// Impl serves the calls (plugin side).
	Impl Shim

	// server is the adapter Serve waits on; nil when the set is used
	// directly with goplugin.Serve.
	server *grpcServer
}

var _ goplugin.GRPCPlugin = (*ShimPlugin)(nil)

// GRPCServer registers the Shim service, backed by p.Impl, on s.
func (p *ShimPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugin: ShimPlugin.Impl is nil")
	}
	srv := p.server
	if srv == nil {
		srv = newGRPCServer(p.Impl)
	}
	hbpb.RegisterShimServer(s, srv)
	srv.setServer(s)
	return nil
}

// GRPCClient returns a Shim that calls the plugin over conn. ctx is cancelled
// by go-plugin when the plugin process exits.
func (p *ShimPlugin) GRPCClient(ctx context.Context, _ *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return newGRPCClient(ctx, conn), nil
}
