package api

import (
	"context"
	"errors"
	"net"
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

// markUndialed marks out "not the leader" when err says the leader could
// not even be dialed. Such a leader never saw the request: it died or is
// going, and an election will name another. The mark makes the request
// wait for the next leader (awaitLeader) rather than fail, and tells
// clients it is safe to send again.
func markUndialed(out *connect.Error, err error) {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		out.Meta().Set(notLeaderMeta, "1")
	}
}

// leaderCallErr is the error of a call made to the meta leader at addr
// for an admin request, marked as markUndialed says.
func leaderCallErr(err error) error {
	if err == nil {
		return nil
	}
	ce := new(connect.Error)
	if !errors.As(err, &ce) {
		ce = connect.NewError(connect.CodeUnavailable, err)
	}
	markUndialed(ce, err)
	return ce
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
