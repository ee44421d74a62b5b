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
	var old *Replica
	for _, r := range p.reps {
		if r.Raft().State() == raft.Leader {
			old = r
		}
	}
	if err := old.Raft().LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new leader's heartbeats paced and the old one's back", func() bool {
		return old.Raft().State() != raft.Leader && paced()
	})
}
