package consensus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// readIndex hands out read indexes on the leader. Reads that arrive while a
// leadership check is under way wait for the next one, so any number of
// concurrent reads costs one heartbeat round each cycle, and no read writes
// to the raft log.
type readIndex struct {
	raft    *raft.Raft
	timeout time.Duration
	// noop commits a no-op command and waits until it is applied. See
	// confirm.
	noop func(timeout time.Duration) error
	// ask gets a read index from the leader when this node is a follower;
	// nil serves only as the leader.
	ask func(ctx context.Context) (uint64, error)

	// readyTerm is the term in which this leader has applied a command of
	// its own: before that its commit index may lag entries that earlier
	// leaders committed.
	readyTerm atomic.Uint64

	mu      sync.Mutex
	waiting []chan readIndexResult
	running bool
}

type readIndexResult struct {
	index uint64
	err   error
}

// get returns an index such that a read of the state once applied up to it
// sees every write acknowledged before get was called.
func (r *readIndex) get(ctx context.Context) (uint64, error) {
	ch := make(chan readIndexResult, 1)
	r.mu.Lock()
	r.waiting = append(r.waiting, ch)
	if !r.running {
		r.running = true
		go r.loop()
	}
	r.mu.Unlock()
	select {
	case res := <-ch:
		return res.index, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (r *readIndex) loop() {
	for {
		r.mu.Lock()
		batch := r.waiting
		r.waiting = nil
		if len(batch) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		idx, err := r.confirm()
		for _, ch := range batch {
			ch <- readIndexResult{index: idx, err: err}
		}
	}
}

// confirm takes the commit index, then proves this node was still the leader
// after taking it.
func (r *readIndex) confirm() (uint64, error) {
	if r.raft.State() != raft.Leader {
		if r.ask == nil {
			return 0, ErrNotLeader
		}
		// One question to the leader answers every read that was waiting.
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		defer cancel()
		return r.ask(ctx)
	}
	term := r.raft.CurrentTerm()
	if r.readyTerm.Load() != term {
		// A no-op command rather than raft's Barrier: raft hands barrier and
		// no-op entries to no FSM, so the store's applied index would never
		// reach a commit index that ends in one. After our own command, every
		// entry of the term is a command or a configuration change, and both
		// reach the store.
		if err := r.noop(r.timeout); err != nil {
			return 0, readErr(err)
		}
		r.readyTerm.Store(term)
	}
	idx := r.raft.CommitIndex()
	if err := r.raft.VerifyLeader().Error(); err != nil {
		return 0, readErr(err)
	}
	return idx, nil
}

// readErr is leaderErr for a read index. A read writes nothing, so a
// leadership lost under it (its no-op's) is only "not the leader": the
// read may be asked again, of whichever node leads next.
func readErr(err error) error {
	if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, ErrLeadershipLost) {
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	}
	return leaderErr(err)
}

// leaderErr turns raft's leadership errors into ours.
func leaderErr(err error) error {
	switch err {
	case raft.ErrNotLeader, raft.ErrLeadershipTransferInProgress:
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case raft.ErrLeadershipLost:
		return ErrLeadershipLost
	case raft.ErrRaftShutdown:
		return fmt.Errorf("%w: %w", ErrShutdown, err)
	case raft.ErrEnqueueTimeout:
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
