package node

import (
	"errors"
	"log/slog"
	"net"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
)

// Raft's pipelined replication can deadlock in hashicorp/raft v1.8.0 (see
// newRaftTransport): the node's transport must not offer it.
func TestRaftTransportDoesNotPipeline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := newRaftTransport(consensus.NewStreamLayer(ln, ln.Addr(), nil), new(raftAddrs), slog.New(slog.DiscardHandler))
	defer trans.Close()
	_, err = trans.AppendEntriesPipeline("peer", raft.ServerAddress(ln.Addr().String()))
	if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline: %v, want %v", err, raft.ErrPipelineReplicationNotSupported)
	}
}
