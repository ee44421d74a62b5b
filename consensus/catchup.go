package consensus

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// catchUpRetry is how long runCatchUp waits before asking again after a
// failed read index.
const catchUpRetry = 100 * time.Millisecond

// runCatchUp sets caughtUp once this node has applied up to a read index
// taken after it started. Until then its state may lack writes the cluster
// acknowledged (a wiped node waits for its snapshot), and Ready says so:
// load balancers and clients of serializable reads must not take an empty
// store for the cluster's.
func (r *Replica) runCatchUp() {
	ctx, cancel := r.stopContext()
	defer cancel()
	leaders, stop := observe[raft.LeaderObservation](r.raft)
	defer stop()
	for !r.caughtUp.Load() {
		// Read after registering: a leader elected before is seen here.
		if addr, _ := r.raft.LeaderWithID(); addr != "" {
			if err := r.catchUpOnce(ctx); err == nil {
				r.caughtUp.Store(true)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-leaders:
		case <-time.After(catchUpRetry):
		}
	}
}

func (r *Replica) catchUpOnce(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, r.ri.timeout)
	idx, err := r.ri.get(rctx)
	cancel()
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	r.catchUpTarget.Store(idx)
	return r.waitApplied(ctx, idx)
}

// catchingUp is Ready's error while runCatchUp has not finished. A leader
// is caught up: raft elects only a node whose log holds every committed
// entry, so a wiped node never leads a cluster that has data.
func (r *Replica) catchingUp() error {
	if r.caughtUp.Load() {
		return nil
	}
	if r.raft.State() == raft.Leader {
		r.caughtUp.Store(true)
		return nil
	}
	if t := r.catchUpTarget.Load(); t > 0 {
		return fmt.Errorf("catching up with the cluster: applied index %d of %d", r.kv.AppliedIndex(), t)
	}
	return fmt.Errorf("catching up with the cluster: asking the leader for its commit index (applied index %d)", r.kv.AppliedIndex())
}
