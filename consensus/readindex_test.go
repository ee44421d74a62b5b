package consensus

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"
)

// TestReadErrRetriesLostLeadership: a read index whose no-op lost its
// leader is "not the leader" (the read is asked again), never the
// "may or may not have been applied" of a write.
func TestReadErrRetriesLostLeadership(t *testing.T) {
	for _, tc := range []struct {
		in        error
		notLeader bool
		lost      bool
	}{
		{raft.ErrLeadershipLost, true, false},
		{ErrLeadershipLost, true, true},
		{raft.ErrNotLeader, true, false},
		{raft.ErrRaftShutdown, false, false},
	} {
		got := readErr(tc.in)
		if errors.Is(got, ErrNotLeader) != tc.notLeader {
			t.Errorf("readErr(%v) = %v: not leader %v, want %v", tc.in, got, !tc.notLeader, tc.notLeader)
		}
		if errors.Is(got, ErrLeadershipLost) != tc.lost {
			t.Errorf("readErr(%v) = %v: leadership lost %v, want %v", tc.in, got, !tc.lost, tc.lost)
		}
	}
	if !errors.Is(readErr(raft.ErrRaftShutdown), ErrShutdown) {
		t.Errorf("readErr(shutdown) = %v", readErr(raft.ErrRaftShutdown))
	}
}
