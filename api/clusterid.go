package api

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// clusterIDMDKey is ClusterIDHeader as gRPC metadata spells it.
const clusterIDMDKey = "kvstore-cluster-id"

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

// clusterIDSender sets ClusterIDHeader on every call Peers makes.
func clusterIDSender(id func() string) connect.Interceptor {
	return clusterIDInterceptor{id: id, send: true}
}

// clusterCheck refuses, with FailedPrecondition, every call that carries a
// cluster id other than ours (Options.ClusterID).
func clusterCheck(id func() string) connect.Interceptor {
	return clusterIDInterceptor{id: id}
}

type clusterIDInterceptor struct {
	id   func() string
	send bool // client side: set the header; server side: check it
}

func (c clusterIDInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if c.send {
			if id := c.id(); id != "" {
				req.Header().Set(ClusterIDHeader, id)
			}
		} else if err := clusterMismatch(c.id, req.Header().Get(ClusterIDHeader)); err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, err)
		}
		return next(ctx, req)
	}
}

func (c clusterIDInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if c.send {
			if id := c.id(); id != "" {
				conn.RequestHeader().Set(ClusterIDHeader, id)
			}
		}
		return conn
	}
}

func (c clusterIDInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if !c.send {
			if err := clusterMismatch(c.id, conn.RequestHeader().Get(ClusterIDHeader)); err != nil {
				return connect.NewError(connect.CodeFailedPrecondition, err)
			}
		}
		return next(ctx, conn)
	}
}

// grpcClusterCheck is clusterCheck for grpc-go's unary calls.
func grpcClusterCheck(id func() string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if err := clusterMismatch(id, mdValue(ctx, clusterIDMDKey)); err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return next(ctx, req)
	}
}

// grpcStreamClusterCheck is clusterCheck for grpc-go's streams.
func grpcStreamClusterCheck(id func() string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, next grpc.StreamHandler) error {
		if err := clusterMismatch(id, mdValue(ss.Context(), clusterIDMDKey)); err != nil {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		return next(srv, ss)
	}
}

func mdValue(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
