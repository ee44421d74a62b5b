package api

import (
	"context"
	"errors"
	"github.com/kvstore/kvstore/auth"
	"io"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// LeaseStore is what LeaseService needs from the store. Every call needs
// the leader, which keeps lease time; followers forward them.
type LeaseStore interface {
	LeaseGrant(context.Context, *kvstorev1.GrantRequest) (*kvstorev1.GrantResponse, error)
	LeaseRevoke(context.Context, *kvstorev1.RevokeRequest) (*kvstorev1.RevokeResponse, error)
	// LeaseKeepAlive renews a lease and returns its TTL in seconds.
	LeaseKeepAlive(ctx context.Context, id int64) (int64, *kvstorev1.ResponseHeader, error)
	LeaseTimeToLive(context.Context, *kvstorev1.TimeToLiveRequest) (*kvstorev1.TimeToLiveResponse, error)
	Leases(context.Context) (*kvstorev1.LeasesResponse, error)
}

type leaseService struct {
	router
	store Store
	authz authorizer
}

func (s *leaseService) Grant(ctx context.Context, creq *connect.Request[kvstorev1.GrantRequest]) (*connect.Response[kvstorev1.GrantResponse], error) {
	if err := grant(creq.Msg); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	return write(ctx, &s.router, creq, "lease grant", s.store.LeaseGrant, (*Peers).leaseClient, kvstorev1connect.LeaseServiceClient.Grant)
}

func (s *leaseService) Revoke(ctx context.Context, creq *connect.Request[kvstorev1.RevokeRequest]) (*connect.Response[kvstorev1.RevokeResponse], error) {
	if err := leaseID(creq.Msg.GetId()); err != nil {
		return nil, err
	}
	if err := s.authorizeRevoke(ctx, creq); err != nil {
		return nil, err
	}
	return write(ctx, &s.router, creq, "lease revoke", s.store.LeaseRevoke, (*Peers).leaseClient, kvstorev1connect.LeaseServiceClient.Revoke)
}

func (s *leaseService) KeepAliveOnce(ctx context.Context, creq *connect.Request[kvstorev1.KeepAliveOnceRequest]) (*connect.Response[kvstorev1.KeepAliveOnceResponse], error) {
	if err := leaseID(creq.Msg.GetId()); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	local := func(ctx context.Context, req *kvstorev1.KeepAliveOnceRequest) (*kvstorev1.KeepAliveOnceResponse, error) {
		ttl, h, err := s.store.LeaseKeepAlive(ctx, req.GetId())
		if err != nil {
			return nil, err
		}
		return &kvstorev1.KeepAliveOnceResponse{Header: h, Id: req.GetId(), TtlSeconds: ttl}, nil
	}
	return write(ctx, &s.router, creq, "lease keep-alive", local, (*Peers).leaseClient, kvstorev1connect.LeaseServiceClient.KeepAliveOnce)
}

// KeepAlive answers each request on the stream as KeepAliveOnce would.
func (s *leaseService) KeepAlive(ctx context.Context, stream *connect.BidiStream[kvstorev1.KeepAliveRequest, kvstorev1.KeepAliveResponse]) error {
	return s.keepAlive(ctx, stream.Receive, stream.Send)
}

// keepAlive serves one KeepAlive stream, over Connect or gRPC.
func (s *leaseService) keepAlive(ctx context.Context, recv func() (*kvstorev1.KeepAliveRequest, error), send func(*kvstorev1.KeepAliveResponse) error) error {
	for {
		req, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// Each renewal gets its own deadline: the stream has none.
		cctx, cancel := context.WithTimeout(ctx, keepAliveTimeout)
		resp, err := s.KeepAliveOnce(cctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: req.GetId()}))
		cancel()
		if err != nil {
			return err
		}
		if err := send(&kvstorev1.KeepAliveResponse{Header: resp.Msg.GetHeader(), Id: resp.Msg.GetId(), TtlSeconds: resp.Msg.GetTtlSeconds()}); err != nil {
			return err
		}
	}
}

func (s *leaseService) TimeToLive(ctx context.Context, creq *connect.Request[kvstorev1.TimeToLiveRequest]) (*connect.Response[kvstorev1.TimeToLiveResponse], error) {
	if err := leaseID(creq.Msg.GetId()); err != nil {
		return nil, err
	}
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	return write(ctx, &s.router, creq, "lease time-to-live", s.store.LeaseTimeToLive, (*Peers).leaseClient, kvstorev1connect.LeaseServiceClient.TimeToLive)
}

func (s *leaseService) Leases(ctx context.Context, creq *connect.Request[kvstorev1.LeasesRequest]) (*connect.Response[kvstorev1.LeasesResponse], error) {
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return nil, err
	}
	local := func(ctx context.Context, _ *kvstorev1.LeasesRequest) (*kvstorev1.LeasesResponse, error) {
		return s.store.Leases(ctx)
	}
	return write(ctx, &s.router, creq, "leases", local, (*Peers).leaseClient, kvstorev1connect.LeaseServiceClient.Leases)
}

var _ LeaseStore = (*consensus.Replica)(nil)

// keepAliveTimeout bounds one renewal on a KeepAlive stream.
const keepAliveTimeout = 5 * time.Second

// authorizeRevoke checks, as etcd does, that the caller may write every
// key attached to the lease: revoking deletes them. The keys are the
// leader's as of the check; one attached between it and the revoke is
// deleted all the same.
func (s *leaseService) authorizeRevoke(ctx context.Context, creq *connect.Request[kvstorev1.RevokeRequest]) error {
	if err := s.authz.authorize(ctx, creq.Header(), false); err != nil {
		return err
	}
	st := s.authz.state()
	if !st.Enabled() {
		return nil
	}
	if isForwarded(creq.Header()) {
		// Checked where the client's call arrived; a follower that had
		// not applied the enable yet is answered with a refusal by
		// authorize above, which checks the user again.
		return nil
	}
	if c, _ := callerOf(ctx); c.peer || st.IsRoot(c.user) {
		return nil
	}
	ttl, err := s.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: creq.Msg.GetId(), Keys: true}))
	if err != nil {
		return err
	}
	needs := make([]auth.Need, 0, len(ttl.Msg.GetKeys()))
	for _, k := range ttl.Msg.GetKeys() {
		needs = append(needs, auth.Need{Access: auth.Write, Key: k})
	}
	return s.authz.authorize(ctx, creq.Header(), false, needs...)
}
