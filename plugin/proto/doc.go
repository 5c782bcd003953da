// Package hbpb holds the generated Go code for hb.proto, the wire protocol
// between hbd and its plugin (package hb.v1). Only package plugin uses it;
// it converts these messages to and from the Go types of its Shim contract.
//
// hb.pb.go and hb_grpc.pb.go are generated: edit hb.proto and run
// `make proto`.
package hbpb
