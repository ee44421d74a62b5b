package api

import (
	"context"
	"math"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/tap"
)

// callRules are what every call a node serves must meet, whichever RPC
// stack serves it: Connect's (Connect, gRPC-Web, JSON and gRPC on
// net/http, NewHandler) or grpc-go's (gRPC on h2c, NewGRPCServer). Each
// rule has one implementation here; the stacks reach it through adapters
// of a few lines (connectRules, grpcUnaryRules, grpcStreamRules,
// requestTap) that only read the call's header and turn the error into the
// stack's own, so a call gets the same code and message over either.
// RequestMetrics follows the same pattern.
//
//   - Who calls (auth.go, identify): a peer, a user by token or client
//     certificate, or nobody; bad credentials are refused here with
//     Unauthenticated. What the caller may touch is checked by the
//     handlers both stacks share (authorize).
//   - The cluster check: a call that carries another cluster's id
//     (ClusterIDHeader: a node of another cluster) is refused with
//     FailedPrecondition.
//   - The default deadline: a unary call that came without a deadline gets
//     Options.DefaultTimeout, so no call waits on raft forever. Streams
//     (watches, keep-alives, snapshots) get none.
//   - The request size: no message larger than Limits.MaxRequestBytes is
//     read. Each stack enforces it while it reads the message, before any
//     interceptor runs and before the message is held whole (readLimit);
//     both answer ResourceExhausted, each with its own library's message
//     naming the size and the limit.
type callRules struct {
	clusterID  func() string // nil: no check
	timeout    time.Duration
	maxRequest int
	authz      authorizer
}

func newCallRules(opts Options) callRules {
	return callRules{clusterID: opts.ClusterID, timeout: opts.DefaultTimeout, maxRequest: opts.Limits.MaxRequestBytes, authz: opts.authorizer()}
}

// checkCluster refuses a call that carries the cluster id theirs ("" when
// it carries none: a client's) if it is not ours.
func (r callRules) checkCluster(theirs string) error {
	if err := clusterMismatch(r.clusterID, theirs); err != nil {
		return connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return nil
}

// withDeadline gives a unary call without a deadline the default one.
func (r callRules) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.timeout)
}

// readLimit is the largest request message either stack reads.
func (r callRules) readLimit() int { return min(r.maxRequest, math.MaxInt32) }

// connectRules is callRules as a Connect interceptor: the cluster check on
// every call, the default deadline on unary calls.
type connectRules struct{ r callRules }

func (c connectRules) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if err := c.r.checkCluster(req.Header().Get(ClusterIDHeader)); err != nil {
			return nil, err
		}
		ctx, err := c.r.authz.identify(ctx, connectCredentials(ctx, req.Header()))
		if err != nil {
			return nil, err
		}
		ctx, cancel := c.r.withDeadline(ctx)
		defer cancel()
		return next(ctx, req)
	}
}

func (c connectRules) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (c connectRules) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := c.r.checkCluster(conn.RequestHeader().Get(ClusterIDHeader)); err != nil {
			return err
		}
		ctx, err := c.r.authz.identify(ctx, connectCredentials(ctx, conn.RequestHeader()))
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// grpcUnaryRules is callRules for grpc-go's unary calls: the cluster check
// and who calls (the deadline is requestTap's, the size grpc-go's).
func (r callRules) grpcUnaryRules() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if err := r.checkCluster(mdValue(ctx, clusterIDMDKey)); err != nil {
			return nil, grpcError(err, func(metadata.MD) {})
		}
		ctx, err := r.authz.identify(ctx, grpcCredentials(ctx))
		if err != nil {
			return nil, identifyError(info.FullMethod, err)
		}
		return next(ctx, req)
	}
}

// grpcStreamRules is callRules for grpc-go's streams: the cluster check
// and who calls.
func (r callRules) grpcStreamRules() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
		if err := r.checkCluster(mdValue(ss.Context(), clusterIDMDKey)); err != nil {
			return grpcError(err, func(metadata.MD) {})
		}
		ctx, err := r.authz.identify(ss.Context(), grpcCredentials(ss.Context()))
		if err != nil {
			return identifyError(info.FullMethod, err)
		}
		if ctx != ss.Context() {
			ss = streamWithContext{ss, ctx}
		}
		return next(srv, ss)
	}
}

// streamWithContext is a stream whose handler sees ctx.
type streamWithContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s streamWithContext) Context() context.Context { return s.ctx }

// requestTap runs when a grpc-go call's headers arrive, before its body: a
// unary call gets the default deadline (withDeadline), from its start, the
// body included, and a server stream a way for receiveRules to end it.
func (r callRules) requestTap(kinds map[string]methodKind) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		switch kinds[info.FullMethodName] {
		case unaryMethod:
			ctx, cancel := r.withDeadline(ctx)
			// grpc-go cancels the call's context when the call ends,
			// which ends this one; this releases its timer then.
			context.AfterFunc(ctx, cancel)
			return ctx, nil
		case serverStream:
			ctx, cancel := context.WithCancelCause(ctx)
			return context.WithValue(ctx, streamCancelKey{}, cancel), nil
		}
		return ctx, nil
	}
}

func mdValue(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
