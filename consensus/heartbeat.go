package consensus

import (
	"time"

	"github.com/hashicorp/raft"
)

// leaderHeartbeatFactor is how much longer than its followers' a leader
// takes its own heartbeat timeout to be (paceHeartbeats).
const leaderHeartbeatFactor = 2

// paceHeartbeats spaces the leader's heartbeats while this node leads.
//
// hashicorp/raft takes one setting, HeartbeatTimeout, for both ends: a
// leader heartbeats every tenth of it (randomized up to twice that), and a
// follower stands for election when it heard nothing for it (likewise
// randomized). (Raft's idle appends, every CommitTimeout, come seldom: the
// leader pushes commit indexes itself, see pushTransport.) While this node
// leads, its own HeartbeatTimeout (and ElectionTimeout, which raft keeps
// at least as long; a leader does not use it) is leaderHeartbeatFactor
// times the configured one: heartbeats a fifth of the followers' timeout
// apart, while the followers, which keep the configured one, notice a
// lost leader as fast as before. A leader's lease is LeaderLeaseTimeout,
// set apart. On losing leadership the node takes the configured timeouts
// back; raft refreshes a former leader's last contact as it steps down,
// so its follower timer starts afresh.
func (r *Replica) paceHeartbeats(heartbeat, election time.Duration) {
	states, stop := observe[raft.RaftState](r.raft)
	defer stop()
	paced := false
	for {
		// Read after registering: a change before it is seen here.
		if lead := r.raft.State() == raft.Leader; lead != paced {
			rc := r.raft.ReloadableConfig()
			rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election
			if lead {
				rc.HeartbeatTimeout *= leaderHeartbeatFactor
				rc.ElectionTimeout = max(election, rc.HeartbeatTimeout)
			}
			if err := r.raft.ReloadConfig(rc); err != nil {
				r.logger.Warn("raft: pace heartbeats", "leader", lead, "error", err)
			} else {
				paced = lead
			}
		}
		select {
		case <-r.stop:
			return
		case <-states:
		}
	}
}
