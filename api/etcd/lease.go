package etcd

import (
	"context"
	"errors"
	"io"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// keepAliveTimeout bounds one renewal on a KeepAlive stream, which has no
// deadline of its own.
const keepAliveTimeout = 5 * time.Second

type leaseServer struct{ f *face }

var _ pb.LeaseServer = leaseServer{}

func (l leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	ttl := r.TTL
	// As etcd: a TTL under the minimum is raised to it, one over the
	// maximum refused.
	if min := int64(consensus.MinLeaseTTL / time.Second); ttl < min {
		ttl = min
	}
	if ttl > int64(consensus.MaxLeaseTTL/time.Second) {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	resp, err := l.f.sv.Lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{Id: r.ID, TtlSeconds: ttl}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.LeaseGrantResponse{Header: header(resp.Msg.GetHeader()), ID: resp.Msg.GetId(), TTL: resp.Msg.GetTtlSeconds()}, nil
}

func (l leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	if r.ID <= 0 {
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	resp, err := l.f.sv.Lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: r.ID}))
	if err != nil {
		return nil, etcdError(err)
	}
	return &pb.LeaseRevokeResponse{Header: header(resp.Msg.GetHeader())}, nil
}

// LeaseKeepAlive renews each lease the stream names, in order. A lease
// that is gone is answered with TTL 0, as etcd does; the client's
// keep-alive channel ends on it. The node's shutdown ends the stream with
// Unavailable, as it ends watch streams: the client goes on elsewhere.
func (l leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var closing <-chan struct{}
	if c := l.f.sv.Closing; c != nil {
		closing = c.Done()
	}
	// Only this goroutine reads: grpc-go allows one reader and one
	// writer at a time, and this handler's goroutine alone sends.
	type received struct {
		req *pb.LeaseKeepAliveRequest
		err error
	}
	in := make(chan received)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case in <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		var r received
		select {
		case r = <-in:
		case <-closing:
			return errClosing
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			if errors.Is(r.err, io.EOF) {
				return nil
			}
			return r.err
		}
		out, err := l.keepAliveOnce(ctx, r.req.ID)
		if err != nil {
			return err
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

func (l leaseServer) keepAliveOnce(ctx context.Context, id int64) (*pb.LeaseKeepAliveResponse, error) {
	out := &pb.LeaseKeepAliveResponse{ID: id}
	if id <= 0 {
		out.Header = l.f.now(ctx)
		return out, nil
	}
	cctx, cancel := context.WithTimeout(ctx, keepAliveTimeout)
	resp, err := l.f.sv.Lease.KeepAliveOnce(cctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: id}))
	cancel()
	switch {
	case err == nil:
		out.Header, out.TTL = header(resp.Msg.GetHeader()), resp.Msg.GetTtlSeconds()
	case is(err, consensus.ErrLeaseNotFound):
		out.Header = l.f.now(ctx)
	default:
		return nil, etcdError(err)
	}
	return out, nil
}

// LeaseTimeToLive answers TTL -1 for a lease that is gone, as etcd does.
func (l leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	if r.ID <= 0 {
		return &pb.LeaseTimeToLiveResponse{Header: l.f.now(ctx), ID: r.ID, TTL: -1}, nil
	}
	resp, err := l.f.sv.Lease.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: r.ID, Keys: r.Keys}))
	if is(err, consensus.ErrLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: l.f.now(ctx), ID: r.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, etcdError(err)
	}
	m := resp.Msg
	return &pb.LeaseTimeToLiveResponse{Header: header(m.GetHeader()), ID: m.GetId(), TTL: m.GetTtlSeconds(), GrantedTTL: m.GetGrantedTtlSeconds(), Keys: m.GetKeys()}, nil
}

func (l leaseServer) LeaseLeases(ctx context.Context, _ *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	resp, err := l.f.sv.Lease.Leases(ctx, connect.NewRequest(&kvstorev1.LeasesRequest{}))
	if err != nil {
		return nil, etcdError(err)
	}
	out := &pb.LeaseLeasesResponse{Header: header(resp.Msg.GetHeader())}
	for _, ls := range resp.Msg.GetLeases() {
		out.Leases = append(out.Leases, &pb.LeaseStatus{ID: ls.GetId()})
	}
	return out, nil
}
