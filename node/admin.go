package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
)

// admin carries out ClusterService's membership calls; a follower hands
// them to the leader.
type admin struct{ n *Node }

var _ api.Admin = admin{}

func (a admin) GossipStates() map[string]string {
	out := map[string]string{}
	for _, m := range a.n.gossip.Members() {
		out[m.ID] = m.State.String()
	}
	return out
}

// healthy tells whether gossip sees the member surely alive: not suspect,
// not leaving. A quorum check takes the cautious view.
func (a admin) healthy(id string) bool {
	if id == a.n.id {
		return true
	}
	for _, m := range a.n.gossip.Members() {
		if m.ID == id {
			return healthy(m)
		}
	}
	return false
}

func (a admin) RemoveMember(ctx context.Context, id string) error {
	r := a.n.replica.Raft()
	if r.State() != raft.Leader {
		_, addr := a.n.replica.Leader()
		if addr == "" {
			return fmt.Errorf("%w: no leader is known", consensus.ErrNotLeader)
		}
		return a.n.peers.RemoveMember(ctx, addr, id)
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	cfg := f.Configuration()
	var found *raft.Server
	for i := range cfg.Servers {
		if string(cfg.Servers[i].ID) == id {
			found = &cfg.Servers[i]
		}
	}
	if found == nil {
		return fmt.Errorf("%w: %q", api.ErrUnknownMember, id)
	}
	if found.Suffrage == raft.Voter && !quorumWithout(cfg, id, a.healthy) {
		return fmt.Errorf("remove %q: %w", id, api.ErrQuorum)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := r.RemoveServer(found.ID, 0, timeout).Error(); err != nil {
		return fmt.Errorf("remove %q: %w", id, raftErr(err))
	}
	a.n.rec.noteRemoved(id)
	return nil
}

func (a admin) TransferLeadership(ctx context.Context, id string) (string, error) {
	r := a.n.replica.Raft()
	if r.State() != raft.Leader {
		_, addr := a.n.replica.Leader()
		if addr == "" {
			return "", fmt.Errorf("%w: no leader is known", consensus.ErrNotLeader)
		}
		return a.n.peers.TransferLeadership(ctx, addr, id)
	}
	var fut raft.Future
	if id == "" {
		fut = r.LeadershipTransfer()
	} else {
		f := r.GetConfiguration()
		if err := f.Error(); err != nil {
			return "", err
		}
		var target *raft.Server
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == id && s.Suffrage == raft.Voter {
				target = &s
			}
		}
		if target == nil {
			return "", fmt.Errorf("%w: no voter %q", api.ErrUnknownMember, id)
		}
		fut = r.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := fut.Error(); err != nil {
		return "", fmt.Errorf("transfer leadership: %w", raftErr(err))
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if leader, _ := a.n.replica.Leader(); leader != "" && leader != a.n.id {
			return leader, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
		}
	}
}

// raftErr gives raft's leadership errors our meaning, for the API's codes.
func raftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %w", consensus.ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", consensus.ErrLeadershipLost, err)
	}
	return err
}
