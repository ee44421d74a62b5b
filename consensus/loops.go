package consensus

import (
	"context"

	"github.com/hashicorp/raft"
)

// observe signals on the returned channel when raft makes an observation
// of type T; stop ends it. One pending signal is enough (capacity 1,
// never blocking raft): each reader reads raft's state anew when woken,
// so it must do so after observe returns to miss no change.
func observe[T any](r *raft.Raft) (signals <-chan raft.Observation, stop func()) {
	ch := make(chan raft.Observation, 1)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(T)
		return ok
	})
	r.RegisterObserver(obs)
	return ch, func() { r.DeregisterObserver(obs) }
}

// stopContext returns a context cancelled when the replica stops (or when
// cancel is called).
func (r *Replica) stopContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
