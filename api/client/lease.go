package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// leaseFailover implements kvstorev1connect.LeaseServiceClient over every
// endpoint. Any node takes lease calls and forwards them to the leader.
type leaseFailover struct{ c *Client }

// Grant calls LeaseService.Grant. A grant that may have reached a server is
// not repeated (it could create a second lease), so it fails over only on
// dial errors, like a write.
func (f leaseFailover) Grant(ctx context.Context, req *connect.Request[kvstorev1.GrantRequest]) (*connect.Response[kvstorev1.GrantResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.GrantRequest]) (*connect.Response[kvstorev1.GrantResponse], error) {
		return e.lease.Grant(ctx, r)
	})
}

// Revoke calls LeaseService.Revoke, failing over only on dial errors: a
// revoke repeated after it took effect would answer NotFound, which would
// wrongly tell the caller the lease was never there.
func (f leaseFailover) Revoke(ctx context.Context, req *connect.Request[kvstorev1.RevokeRequest]) (*connect.Response[kvstorev1.RevokeResponse], error) {
	return invoke(ctx, f.c, req, false, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.RevokeRequest]) (*connect.Response[kvstorev1.RevokeResponse], error) {
		return e.lease.Revoke(ctx, r)
	})
}

// KeepAlive opens the bidi keep-alive stream on the current endpoint. A
// stream cannot move between nodes, so there is no failover: when it
// breaks, open another. It needs HTTP/2 (the "grpc" protocol, or TLS);
// over the default HTTP/1.1 transport use KeepAliveOnce, or the loop of
// Client.KeepAlive, which does.
func (f leaseFailover) KeepAlive(ctx context.Context) *connect.BidiStreamForClient[kvstorev1.KeepAliveRequest, kvstorev1.KeepAliveResponse] {
	n := len(f.c.endpoints)
	return f.c.endpoints[int(f.c.current.Load())%n].lease.KeepAlive(ctx)
}

// KeepAliveOnce calls LeaseService.KeepAliveOnce. Renewing twice does no
// harm, so it fails over like a read.
func (f leaseFailover) KeepAliveOnce(ctx context.Context, req *connect.Request[kvstorev1.KeepAliveOnceRequest]) (*connect.Response[kvstorev1.KeepAliveOnceResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.KeepAliveOnceRequest]) (*connect.Response[kvstorev1.KeepAliveOnceResponse], error) {
		return e.lease.KeepAliveOnce(ctx, r)
	})
}

// TimeToLive calls LeaseService.TimeToLive, failing over on
// CodeUnavailable.
func (f leaseFailover) TimeToLive(ctx context.Context, req *connect.Request[kvstorev1.TimeToLiveRequest]) (*connect.Response[kvstorev1.TimeToLiveResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.TimeToLiveRequest]) (*connect.Response[kvstorev1.TimeToLiveResponse], error) {
		return e.lease.TimeToLive(ctx, r)
	})
}

// Leases calls LeaseService.Leases, failing over on CodeUnavailable.
func (f leaseFailover) Leases(ctx context.Context, req *connect.Request[kvstorev1.LeasesRequest]) (*connect.Response[kvstorev1.LeasesResponse], error) {
	return invoke(ctx, f.c, req, true, func(ctx context.Context, e *endpoint, r *connect.Request[kvstorev1.LeasesRequest]) (*connect.Response[kvstorev1.LeasesResponse], error) {
		return e.lease.Leases(ctx, r)
	})
}

// TTLSeconds converts a lease time to live to the whole seconds the API
// takes, rounding up: a lease never lives shorter than asked.
func TTLSeconds(ttl time.Duration) int64 {
	return int64((ttl + time.Second - 1) / time.Second)
}

// ErrLeaseLost is returned (wrapped) by KeepAlive, and by Session.Err, when
// the lease is gone or can no longer be assumed alive: the server answered
// NotFound (it expired or was revoked), or no renewal succeeded within its
// time to live.
var ErrLeaseLost = errors.New("lease lost")

// minKeepAliveAttempt bounds one renewal attempt from below, so that a short
// TTL still leaves a call time to fail over to another node.
const minKeepAliveAttempt = 500 * time.Millisecond

// KeepAlive keeps lease id alive until ctx ends or the lease is lost,
// renewing it with KeepAliveOnce a third of its TTL after each renewal, as
// etcd does. It works over any protocol, HTTP/1.1 included: it does not use
// the bidi stream.
//
// Every renewal is passed to onRenew (which may be nil) from KeepAlive's
// own goroutine. The first renewal happens at once; if it fails, KeepAlive
// returns its error.
//
// A renewal that fails with anything but NotFound is retried, failing over
// between endpoints, until the lease's TTL has passed since the last
// renewal that succeeded was sent; then the lease may have expired on the
// server and KeepAlive gives up. It returns ctx.Err() when ctx ends, and an
// error wrapping ErrLeaseLost when the lease is lost.
func (c *Client) KeepAlive(ctx context.Context, id int64, onRenew func(*kvstorev1.KeepAliveOnceResponse)) error {
	renew := func(timeout time.Duration) (*kvstorev1.KeepAliveOnceResponse, error) {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		resp, err := c.Lease.KeepAliveOnce(cctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: id}))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}

	sent := time.Now()
	first, err := renew(10 * time.Second)
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return fmt.Errorf("keep-alive of lease %x: %w: %w", id, ErrLeaseLost, err)
		}
		return fmt.Errorf("keep-alive of lease %x: %w", id, err)
	}
	if onRenew != nil {
		onRenew(first)
	}
	ttl := time.Duration(first.GetTtlSeconds()) * time.Second
	// The lease surely lives until the last successful renewal was sent plus
	// its TTL: the server renewed it at some point after that.
	deadline := sent.Add(ttl)
	next := sent.Add(ttl / 3)
	var lastErr error
	for {
		timer := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("keep-alive of lease %x: %w: no renewal within its TTL of %v (last error: %v)", id, ErrLeaseLost, ttl, lastErr)
		}
		attempt := max(min(left, ttl/3), minKeepAliveAttempt)
		sent = time.Now()
		resp, err := renew(attempt)
		switch {
		case err == nil:
			lastErr = nil
			if t := time.Duration(resp.GetTtlSeconds()) * time.Second; t > 0 {
				ttl = t
			}
			deadline = sent.Add(ttl)
			next = sent.Add(ttl / 3)
			if onRenew != nil {
				onRenew(resp)
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case connect.CodeOf(err) == connect.CodeNotFound:
			return fmt.Errorf("keep-alive of lease %x: %w: %w", id, ErrLeaseLost, err)
		default:
			// The cluster may be electing a leader or a node may be down:
			// try again soon, but not in a tight loop.
			lastErr = err
			next = time.Now().Add(min(200*time.Millisecond, time.Until(deadline)))
		}
	}
}

// Session is a lease kept alive in the background, as etcd's
// concurrency.Session: what a Mutex (or any set of keys that must vanish
// with their owner) hangs on.
//
// Done is closed when the session ends: the lease was lost, or Close or
// Orphan was called. Err then tells why.
type Session struct {
	c   *Client
	id  int64
	ttl time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	err error
}

// SessionOption configures NewSession.
type SessionOption func(*sessionOptions)

type sessionOptions struct {
	ttl   time.Duration
	lease int64
}

// DefaultSessionTTL is the lease TTL of a session made without
// WithSessionTTL.
const DefaultSessionTTL = 60 * time.Second

// WithSessionTTL sets the TTL of the lease NewSession grants (rounded up to
// whole seconds; the server wants at least 2s). A holder that dies keeps
// what it holds for up to this long.
func WithSessionTTL(ttl time.Duration) SessionOption {
	return func(o *sessionOptions) { o.ttl = ttl }
}

// WithSessionLease makes NewSession keep an existing lease alive instead of
// granting one.
func WithSessionLease(id int64) SessionOption {
	return func(o *sessionOptions) { o.lease = id }
}

// ErrSessionClosed is the Err of a session ended by Close or Orphan.
var ErrSessionClosed = errors.New("session closed")

// NewSession grants a lease (or takes the one of WithSessionLease), renews
// it once, and keeps it alive in the background until Close, Orphan, or the
// lease is lost. ctx bounds only the grant and the first renewal.
func (c *Client) NewSession(ctx context.Context, opts ...SessionOption) (*Session, error) {
	o := sessionOptions{ttl: DefaultSessionTTL}
	for _, opt := range opts {
		opt(&o)
	}
	id := o.lease
	if id == 0 {
		resp, err := c.Lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: TTLSeconds(o.ttl)}))
		if err != nil {
			return nil, fmt.Errorf("session: grant lease: %w", err)
		}
		id = resp.Msg.GetId()
	}
	s := &Session{c: c, id: id, done: make(chan struct{})}
	// The keep-alive loop lives as long as the session, not as ctx.
	kctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	first := make(chan error, 1)
	var once sync.Once
	go func() {
		err := c.KeepAlive(kctx, id, func(r *kvstorev1.KeepAliveOnceResponse) {
			s.mu.Lock()
			s.ttl = time.Duration(r.GetTtlSeconds()) * time.Second
			s.mu.Unlock()
			once.Do(func() { first <- nil })
		})
		if errors.Is(err, context.Canceled) && kctx.Err() != nil {
			err = ErrSessionClosed
		}
		once.Do(func() { first <- err })
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.done)
	}()
	select {
	case err := <-first:
		if err != nil {
			cancel()
			<-s.done
			return nil, fmt.Errorf("session: %w", err)
		}
	case <-ctx.Done():
		cancel()
		<-s.done
		if o.lease == 0 {
			s.revoke()
		}
		return nil, fmt.Errorf("session: first keep-alive: %w", ctx.Err())
	}
	return s, nil
}

// Client returns the client the session uses.
func (s *Session) Client() *Client { return s.c }

// Lease returns the session's lease id.
func (s *Session) Lease() int64 { return s.id }

// TTL returns the lease's TTL as the last renewal gave it.
func (s *Session) TTL() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ttl
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session lives, then why it ended: an error
// wrapping ErrLeaseLost, or ErrSessionClosed.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Orphan stops the keep-alive loop and leaves the lease alone: it expires
// after its TTL unless someone else renews it. It is what a holder that
// dies does, and what a process that hands its lease over does.
func (s *Session) Orphan() {
	s.cancel()
	<-s.done
}

// Close stops the keep-alive loop and revokes the lease, which deletes the
// keys attached to it (a Mutex's key among them) at once. It returns the
// revoke's error; a lease already gone is not an error.
func (s *Session) Close() error {
	s.Orphan()
	return s.revoke()
}

func (s *Session) revoke() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.c.Lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: s.id}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fmt.Errorf("session: revoke lease %x: %w", s.id, err)
	}
	return nil
}
