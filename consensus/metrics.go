package consensus

import (
	"sync/atomic"
	"time"
)

// Observer hears of what the node's metrics time. Every field may be nil;
// the calls are made on the request and apply paths, so they must be quick
// and must not block.
type Observer struct {
	// BackendCommit hears how long each applied batch took to commit to
	// the key-value store.
	BackendCommit func(time.Duration)
	// ReadIndex hears how long a linearizable read waited for its read
	// index (on a follower: the leader's answer), and whether that failed.
	ReadIndex func(time.Duration, error)
	// Snapshot hears how long each raft snapshot's checkpoint of the
	// key-value state took.
	Snapshot func(time.Duration)
}

// proposalStats counts proposals this node made as leader.
type proposalStats struct {
	pending atomic.Int64
	failed  atomic.Uint64
}

// ProposalStats returns how many proposals wait to be applied now, and how
// many failed since the replica started (not leader, timeout, refused by
// the state machine, raft shut down).
func (r *Replica) ProposalStats() (pending int64, failed uint64) {
	return r.proposals.pending.Load(), r.proposals.failed.Load()
}

// LeaseCount is how many leases the state holds.
func (r *Replica) LeaseCount() int {
	r.lessor.mu.Lock()
	defer r.lessor.mu.Unlock()
	return len(r.lessor.leases)
}
