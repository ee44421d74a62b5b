package consensus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

var (
	// ErrLeaseNotFound names a lease that does not exist (any more).
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrLeaseExists refuses a grant of an id already in use.
	ErrLeaseExists = errors.New("lease already exists")
	// ErrKeyTooLong refuses a put whose key is longer than the store can
	// hold (storage.MaxKeyBytes).
	ErrKeyTooLong = errors.New("key too long for the store")
)

// Lease TTL bounds. The minimum leaves room for a leader change: a new
// leader gives every lease its full TTL again, and an election takes about
// a second.
const (
	MinLeaseTTL = 2 * time.Second
	MaxLeaseTTL = 365 * 24 * time.Hour
)

// lessor keeps lease deadlines. Every node tracks which leases exist (the
// state machine tells it), but only the leader keeps time: when a node
// becomes leader, every lease gets its full TTL from then on (no lease
// expires early because the old leader's clock is lost), and from then on
// it expires the leases whose deadline passed by revoking them through raft.
type lessor struct {
	mu      sync.Mutex
	leases  map[int64]*leaseClock
	primary bool // this node leads and has reset the deadlines
	now     func() time.Time
	// added gets a signal when a lease comes into an empty set (capacity
	// 1): the leader's ticker runs only while there are leases.
	added chan struct{}
}

type leaseClock struct {
	ttl      time.Duration
	deadline time.Time
	expiring bool // a revoke is in flight
}

func newLessor() *lessor {
	return &lessor{leases: make(map[int64]*leaseClock), now: time.Now, added: make(chan struct{}, 1)}
}

// signalAdded tells runLessor that there are leases to keep time for.
func (l *lessor) signalAdded() {
	select {
	case l.added <- struct{}{}:
	default:
	}
}

// empty tells whether no lease exists.
func (l *lessor) empty() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leases) == 0
}

// granted and revoked are called by the state machine after it applied the
// change.
func (l *lessor) granted(id int64, ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leases[id] = &leaseClock{ttl: ttl, deadline: l.now().Add(ttl)}
	l.signalAdded()
}

func (l *lessor) revoked(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.leases, id)
}

// reload replaces the lease set with what the store holds, after a
// snapshot restore or at start.
func (l *lessor) reload(leases []storage.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.leases = make(map[int64]*leaseClock, len(leases))
	for _, s := range leases {
		ttl := time.Duration(s.TTL) * time.Second
		l.leases[s.ID] = &leaseClock{ttl: ttl, deadline: now.Add(ttl)}
	}
	if len(l.leases) > 0 {
		l.signalAdded()
	}
}

// promote starts keeping time: every lease gets its full TTL from now.
func (l *lessor) promote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for _, c := range l.leases {
		c.deadline, c.expiring = now.Add(c.ttl), false
	}
	l.primary = true
}

func (l *lessor) demote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.primary = false
}

func (l *lessor) isPrimary() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.primary
}

// renew restarts a lease's TTL; only the primary can.
func (l *lessor) renew(id int64) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.primary {
		return 0, fmt.Errorf("%w: not keeping lease time yet", ErrNotLeader)
	}
	c, ok := l.leases[id]
	if !ok || c.expiring {
		return 0, fmt.Errorf("lease %d: %w", id, ErrLeaseNotFound)
	}
	c.deadline = l.now().Add(c.ttl)
	return c.ttl, nil
}

// remaining is the time a lease has left and its granted TTL.
func (l *lessor) remaining(id int64) (left, ttl time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.primary {
		return 0, 0, fmt.Errorf("%w: not keeping lease time yet", ErrNotLeader)
	}
	c, ok := l.leases[id]
	if !ok {
		return 0, 0, fmt.Errorf("lease %d: %w", id, ErrLeaseNotFound)
	}
	return max(c.deadline.Sub(l.now()), 0), c.ttl, nil
}

// expired marks and returns the leases past their deadline, oldest first.
func (l *lessor) expired() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.primary {
		return nil
	}
	now := l.now()
	var ids []int64
	for id, c := range l.leases {
		if !c.expiring && !now.Before(c.deadline) {
			c.expiring = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// retry unmarks a lease whose revoke failed, so a later tick tries again.
func (l *lessor) retry(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.leases[id]; ok {
		c.expiring = false
	}
}

func (l *lessor) has(id int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.leases[id]
	return ok
}

// leaseTick is how often the leader looks for expired leases.
const leaseTick = 100 * time.Millisecond

// runLessor follows leadership and expires leases while this node leads.
// It ticks only while this node leads and leases exist: otherwise it waits
// for raft's next change of state or the first lease, so that a node at
// rest is not woken for nothing.
func (r *Replica) runLessor() {
	states, stop := observe[raft.RaftState](r.raft)
	defer stop()
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	tick := t.C
	var term uint64 // the term this node promoted its lessor in
	for {
		select {
		case <-r.stop:
			return
		case <-tick:
		case <-states:
		case <-r.lessor.added:
		}
		if r.raft.State() != raft.Leader {
			r.lessor.demote()
			t.Stop()
			tick = nil
			continue
		}
		if tick == nil {
			t.Reset(leaseTick)
			tick = t.C
		}
		if !r.lessor.isPrimary() || r.raft.CurrentTerm() != term {
			// Leadership may have been lost and won back between ticks.
			r.lessor.demote()
			term = r.raft.CurrentTerm()
			// The lease set must be current before the clocks restart: a
			// read index proves this node applied everything committed
			// before its term.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := r.ri.get(ctx)
			cancel()
			if err != nil {
				continue
			}
			r.lessor.promote()
			r.logger.Info("keeping lease time as the leader")
			continue
		}
		for _, id := range r.lessor.expired() {
			go r.expire(id)
		}
		if r.lessor.empty() {
			// A lease granted from here on signals added.
			t.Stop()
			tick = nil
		}
	}
}

func (r *Replica) expire(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_LeaseRevoke{
		LeaseRevoke: &kvstorev1.RevokeRequest{Id: id},
	}})
	if err != nil && !errors.Is(err, ErrLeaseNotFound) {
		r.logger.Warn("lease expiry", "lease", id, "error", err)
		r.lessor.retry(id)
	}
}

// LeaseGrant creates a lease; the leader only.
func (r *Replica) LeaseGrant(ctx context.Context, req *kvstorev1.GrantRequest) (*kvstorev1.GrantResponse, error) {
	id := req.GetId()
	if id == 0 {
		// Random ids: no counter to keep, and ids are not reused soon.
		for id == 0 || r.lessor.has(id) {
			id = rand.Int64()
		}
	}
	resp, rev, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_LeaseGrant{
		LeaseGrant: &kvstorev1.GrantRequest{Id: id, TtlSeconds: req.GetTtlSeconds()},
	}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.GrantResponse)
	out.Header = r.Header(rev)
	return out, nil
}

// LeaseRevoke deletes a lease and its keys; the leader only.
func (r *Replica) LeaseRevoke(ctx context.Context, req *kvstorev1.RevokeRequest) (*kvstorev1.RevokeResponse, error) {
	_, rev, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_LeaseRevoke{LeaseRevoke: req}})
	if err != nil {
		return nil, err
	}
	return &kvstorev1.RevokeResponse{Header: r.Header(rev)}, nil
}

// LeaseKeepAlive renews a lease and returns its TTL; the leader only.
func (r *Replica) LeaseKeepAlive(_ context.Context, id int64) (int64, *kvstorev1.ResponseHeader, error) {
	if err := r.fsm.serving(); err != nil {
		return 0, nil, err
	}
	if r.raft.State() != raft.Leader {
		return 0, nil, r.notLeader()
	}
	ttl, err := r.lessor.renew(id)
	if err != nil {
		return 0, nil, err
	}
	return int64(ttl / time.Second), r.Header(r.kv.AppliedIndex()), nil
}

// LeaseTimeToLive tells how long a lease has left; the leader only.
func (r *Replica) LeaseTimeToLive(_ context.Context, req *kvstorev1.TimeToLiveRequest) (*kvstorev1.TimeToLiveResponse, error) {
	if err := r.fsm.serving(); err != nil {
		return nil, err
	}
	if r.raft.State() != raft.Leader {
		return nil, r.notLeader()
	}
	left, ttl, err := r.lessor.remaining(req.GetId())
	if err != nil {
		return nil, err
	}
	resp := &kvstorev1.TimeToLiveResponse{
		Header:            r.Header(r.kv.AppliedIndex()),
		Id:                req.GetId(),
		TtlSeconds:        int64((left + time.Second - 1) / time.Second),
		GrantedTtlSeconds: int64(ttl / time.Second),
	}
	if req.GetKeys() {
		_, keys, ok, err := r.kv.LeaseKeys(req.GetId())
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("lease %d: %w", req.GetId(), ErrLeaseNotFound)
		}
		resp.Keys = keys
	}
	return resp, nil
}

// Leases lists the leases; the leader only, so the list is current.
func (r *Replica) Leases(context.Context) (*kvstorev1.LeasesResponse, error) {
	if err := r.fsm.serving(); err != nil {
		return nil, err
	}
	if r.raft.State() != raft.Leader {
		return nil, r.notLeader()
	}
	leases, err := r.kv.Leases()
	if err != nil {
		return nil, err
	}
	resp := &kvstorev1.LeasesResponse{Header: r.Header(r.kv.AppliedIndex())}
	for _, l := range leases {
		resp.Leases = append(resp.Leases, &kvstorev1.LeaseStatus{Id: l.ID, GrantedTtlSeconds: l.TTL})
	}
	return resp, nil
}

// Compact drops the history below req.Revision, through raft.
func (r *Replica) Compact(ctx context.Context, req *kvstorev1.CompactRequest) (*kvstorev1.CompactResponse, error) {
	_, rev, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_Compact{Compact: req}})
	if err != nil {
		return nil, err
	}
	return &kvstorev1.CompactResponse{Header: r.Header(rev)}, nil
}

// Watch starts a watcher on this node's applied state.
func (r *Replica) Watch(spec storage.WatchSpec) (*storage.Watcher, error) {
	if err := r.fsm.serving(); err != nil {
		return nil, err
	}
	return r.kv.Watch(spec)
}
