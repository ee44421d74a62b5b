package api

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
)

// clusterIDMDKey is ClusterIDHeader as gRPC metadata spells it.
const clusterIDMDKey = "kvstore-cluster-id"

// peerHeader marks every call one node makes to another (Peers) with the
// caller's id: such calls are not checked against users' permissions
// (auth.go). peerMDKey is its gRPC metadata key.
const (
	peerHeader = "Kvstore-Peer"
	peerMDKey  = "kvstore-peer"
)

// clusterMismatch is the error of a call from a node of another cluster,
// or nil: the call carries no cluster id (a client), or ours, or we have
// none yet.
func clusterMismatch(local func() string, theirs string) error {
	if theirs == "" || local == nil {
		return nil
	}
	ours := local()
	if ours == "" || ours == theirs {
		return nil
	}
	return fmt.Errorf("this node belongs to cluster %s and the calling node to cluster %s: nodes of different clusters do not serve each other", ours, theirs)
}

// clusterIDInterceptor sends the cluster id, and with self set, the peer
// header (peerHeader): every call of Peers is a peer's.
type clusterIDInterceptor struct {
	id   func() string // nil: none
	self string
}

func (c clusterIDInterceptor) set(h http.Header) {
	if c.id != nil {
		if id := c.id(); id != "" {
			h.Set(ClusterIDHeader, id)
		}
	}
	if c.self != "" {
		h.Set(peerHeader, c.self)
	}
}

func (c clusterIDInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		c.set(req.Header())
		return next(ctx, req)
	}
}

func (c clusterIDInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		c.set(conn.RequestHeader())
		return conn
	}
}

func (c clusterIDInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
