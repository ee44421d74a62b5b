package consensus

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestLeaderPacesHeartbeats: the leader, and only the leader, runs with
// leaderHeartbeatFactor times the configured heartbeat timeout; a node
// that loses leadership takes the configured one back.
func TestLeaderPacesHeartbeats(t *testing.T) {
	const base = 50 * time.Millisecond // newPair's
	p := newPair(t)
	p.bootstrap()
	paced := func() bool {
		leaders := 0
		for _, r := range p.reps {
			want := base
			if r.Raft().State() == raft.Leader {
				want = leaderHeartbeatFactor * base
				leaders++
			}
			if rc := r.Raft().ReloadableConfig(); rc.HeartbeatTimeout != want || rc.ElectionTimeout < want {
				return false
			}
		}
		return leaders == 1
	}
	waitFor(t, "the leader's heartbeats paced", paced)
	// With 50 ms timeouts a loaded machine may depose the leader before
	// the transfer starts: transfer from whichever node leads then.
	var old *Replica
	waitFor(t, "a leadership transfer", func() bool {
		old = nil
		for _, r := range p.reps {
			if r.Raft().State() == raft.Leader {
				old = r
			}
		}
		return old != nil && old.Raft().LeadershipTransfer().Error() == nil
	})
	waitFor(t, "the new leader's heartbeats paced and the old one's back", func() bool {
		return old.Raft().State() != raft.Leader && paced()
	})
}
