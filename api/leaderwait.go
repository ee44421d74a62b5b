package api

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus"
)

// notLeaderMeta marks an Unavailable error that says "I am not the leader"
// and nothing else: the request was not applied, so it can be sent again.
// A forwarding node reads it from the leader's answer.
const notLeaderMeta = "Kvstore-Not-Leader"

// DefaultLeaderWait bounds how long a request waits out an election or a
// leadership transfer before it answers Unavailable, unless
// Options.LeaderWait says otherwise: about three elections with raft's
// default timing (consensus.DefaultRaftTimeout).
const DefaultLeaderWait = 3 * time.Second

// isNotLeader tells whether err says only that the serving node was not
// the leader, here or on the node a request was forwarded to.
func isNotLeader(err error) bool {
	if errors.Is(err, consensus.ErrNotLeader) {
		return true
	}
	var ce *connect.Error
	return errors.As(err, &ce) && ce.Meta().Get(notLeaderMeta) != ""
}

// awaitLeader calls f until it answers something other than "not the
// leader": requests that arrive during an election or a leadership transfer
// wait for the new leader, as etcd's do, rather than fail. It gives up after
// maxWait or half the time left before the deadline, whichever is
// sooner, so that a node cut off from the quorum still answers Unavailable
// within the deadline. A request forwarded to us does not wait: the node it
// came from does.
func awaitLeader[T any](ctx context.Context, forwarded bool, maxWait time.Duration, f func() (T, error)) (T, error) {
	wait := maxWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	if forwarded {
		wait = 0
	}
	giveUp := time.Now().Add(wait)
	delay := 5 * time.Millisecond
	for {
		v, err := f()
		if !isNotLeader(err) || !time.Now().Add(delay).Before(giveUp) {
			return v, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}
