package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Moving a data group's replicas (kvctl group move): the meta group
// records the group's Target; the group's leader then carries the move
// out, one step at a time, each step recomputed from the range table and
// the group's raft configuration (nextMoveStep), so that a crash or a new
// leader between two steps picks up where the move stood. A step that
// adds a host is recorded in the table first (the node then starts the
// group's replica, empty, and waits to be contacted); one that removes a
// host is done in raft first (the node stops its replica only once the
// table drops it, after raft did).

// moveKind is what the next step of a move does.
type moveKind int

const (
	moveNone         moveKind = iota
	moveTableAdd              // record the node as a non-voter in the table
	moveRaftAdd               // add it to raft as a non-voter
	moveRaftPromote           // make it a voter in raft
	moveTablePromote          // record it as a voter in the table
	moveHandOver              // the leader is to be removed: hand leadership over
	moveRaftRemove            // remove the node from raft
	moveTableRemove           // drop it from the table
)

// nextMoveStep is the next step of g's move as its leader self sees it,
// given the group's raft configuration (node id to suffrage): new nodes
// are added and promoted first, then the others removed, so the group
// never has fewer voters than it had.
func nextMoveStep(self string, g ranges.Group, cfg map[string]raft.ServerSuffrage) (moveKind, string) {
	if g.Target == nil {
		return moveNone, ""
	}
	for _, n := range g.Target {
		t := string(n)
		s, inRaft := cfg[t]
		switch {
		case slices.Contains(g.Voters, n):
		case !slices.Contains(g.NonVoters, n):
			return moveTableAdd, t
		case !inRaft:
			return moveRaftAdd, t
		case s != raft.Voter:
			return moveRaftPromote, t
		default:
			return moveTablePromote, t
		}
	}
	for _, n := range slices.Concat(g.Voters, g.NonVoters) {
		if slices.Contains(g.Target, n) {
			continue
		}
		if _, inRaft := cfg[string(n)]; !inRaft {
			return moveTableRemove, string(n)
		}
		if string(n) == self {
			return moveHandOver, ""
		}
		return moveRaftRemove, string(n)
	}
	return moveNone, ""
}

// moveTimeout bounds one step of a move.
const moveTimeout = 10 * time.Second

// moveGroups carries out one step of the move of every group this node
// leads that is moving; it reports whether any step was taken.
func (h *groupHost) moveGroups(ctx context.Context) bool {
	t := h.Table()
	moved := false
	for _, g := range t.Groups {
		if g.ID == ranges.MetaID {
			continue
		}
		h.mu.Lock()
		r, ok := h.hosted[g.ID]
		h.mu.Unlock()
		if !ok || r.Raft().State() != raft.Leader {
			continue
		}
		if tr, creating := pendingCreate(t, g.ID); creating {
			// Its replicas start from the copy: the group serves the range
			// once the meta group hands it over.
			h.logger.Info("a new group has its keys and a leader: switching the range to it", "group", g.ID, "transfer", tr.ID)
			ctx, cancel := context.WithTimeout(ctx, moveTimeout)
			_, err := admin{h.n}.MoveGroup(ctx, &kvstorev1.MoveGroupRequest{Step: &kvstorev1.GroupStep{
				Group: uint64(g.ID), Kind: kvstorev1.GroupStepKind_GROUP_STEP_KIND_SWITCH, Transfer: tr.ID}})
			cancel()
			if err != nil {
				h.logger.Warn("could not switch a range to its new group; trying again", "group", g.ID, "error", err)
				continue
			}
			moved = true
			continue
		}
		f := r.Raft().GetConfiguration()
		if f.Error() != nil {
			continue
		}
		cfg := map[string]raft.ServerSuffrage{}
		for _, s := range f.Configuration().Servers {
			cfg[string(s.ID)] = s.Suffrage
		}
		kind, node := nextMoveStep(h.n.id, g, cfg)
		if kind == moveNone {
			continue
		}
		if err := h.moveStep(ctx, r, g, kind, node); err != nil {
			h.logger.Warn("a step of a data group's move failed; trying again", "group", g.ID, "node", node, "error", err)
			continue
		}
		moved = true
	}
	return moved
}

// moveStep takes one step of g's move.
func (h *groupHost) moveStep(ctx context.Context, r *groupReplica, g ranges.Group, kind moveKind, node string) error {
	ctx, cancel := context.WithTimeout(ctx, moveTimeout)
	defer cancel()
	table := func(k kvstorev1.GroupStepKind) error {
		_, err := admin{h.n}.MoveGroup(ctx, &kvstorev1.MoveGroupRequest{Step: &kvstorev1.GroupStep{Group: uint64(g.ID), Kind: k, Node: node}})
		return err
	}
	addr := func() (raft.ServerAddress, error) { return h.n.addrs.ServerAddr(raft.ServerID(node)) }
	h.logger.Info("moving a data group", "group", g.ID, "step", kind, "node", node)
	switch kind {
	case moveTableAdd:
		return table(kvstorev1.GroupStepKind_GROUP_STEP_KIND_ADD_NON_VOTER)
	case moveTablePromote:
		return table(kvstorev1.GroupStepKind_GROUP_STEP_KIND_PROMOTE)
	case moveTableRemove:
		return table(kvstorev1.GroupStepKind_GROUP_STEP_KIND_REMOVE)
	case moveRaftAdd, moveRaftPromote:
		a, err := addr()
		if err != nil {
			return err
		}
		if kind == moveRaftAdd {
			return raftErr(r.Raft().AddNonvoter(raft.ServerID(node), a, 0, moveTimeout).Error())
		}
		return raftErr(r.Raft().AddVoter(raft.ServerID(node), a, 0, moveTimeout).Error())
	case moveRaftRemove:
		return raftErr(r.Raft().RemoveServer(raft.ServerID(node), 0, moveTimeout).Error())
	case moveHandOver:
		return raftErr(r.Raft().LeadershipTransfer().Error())
	}
	return nil
}

// MoveGroup implements api.Admin: the meta leader records the target (or
// a step); a follower hands the call to it. A move then waits until the
// group's voters are the target.
func (a admin) MoveGroup(ctx context.Context, req *kvstorev1.MoveGroupRequest) (*kvstorev1.MoveGroupResponse, error) {
	n := a.n
	if req.GetStep() == nil {
		members := n.RaftMembers()
		for _, id := range req.GetReplicas() {
			if !slices.Contains(members, id) {
				return nil, fmt.Errorf("move group %q: %w: %q", req.GetName(), api.ErrUnknownMember, id)
			}
		}
	}
	var (
		resp *kvstorev1.MoveGroupResponse
		err  error
	)
	if n.replica.Raft().State() != raft.Leader {
		// The leader answers once the move is done, as seen by its table
		// (this node's may lag, or stop: a leaving node's).
		_, addr := n.replica.Leader()
		if addr == "" {
			return nil, fmt.Errorf("%w: no leader is known", consensus.ErrNotLeader)
		}
		return n.peers.MoveGroup(ctx, addr, req)
	}
	resp, err = n.replica.MoveGroup(ctx, req)
	if err != nil || req.GetStep() != nil {
		return resp, err
	}
	id := ranges.GroupID(resp.GetGroup().GetId())
	for {
		t := n.dataGroups.Table()
		g, ok := t.Group(id)
		if !ok {
			return nil, fmt.Errorf("move group %q: %w", req.GetName(), ranges.ErrNoGroup)
		}
		if slices.Equal(g.Voters, g.Target) && len(g.NonVoters) == 0 {
			resp.Group = consensus.GroupInfo(t, id)
			return resp, nil
		}
		if err := n.dataGroups.WaitTable(ctx, t.Version+1); err != nil {
			return nil, fmt.Errorf("move group %q: the move goes on (kvctl group list shows it): %w", req.GetName(), err)
		}
	}
}

func (k moveKind) String() string {
	switch k {
	case moveTableAdd:
		return "add to the table"
	case moveRaftAdd:
		return "add to raft as a non-voter"
	case moveRaftPromote:
		return "promote in raft"
	case moveTablePromote:
		return "promote in the table"
	case moveHandOver:
		return "hand leadership over"
	case moveRaftRemove:
		return "remove from raft"
	case moveTableRemove:
		return "remove from the table"
	}
	return "none"
}

// replaceGone, on the meta leader, moves each data group that has a
// replica on a node no longer in the cluster (the meta group removed it:
// dead past --dead-after, or removed by hand) to its other replicas and
// as many new ones, placed as a new group's are. The group's leader then
// adds, catches up and promotes the new ones before it removes the gone.
func (h *groupHost) replaceGone(ctx context.Context) {
	n := h.n
	if n.replica.Raft().State() != raft.Leader {
		return
	}
	members := n.RaftMembers()
	a := admin{n}
	var alive []ranges.Node
	for _, id := range members {
		if a.healthy(id) {
			alive = append(alive, ranges.Node{ID: ranges.NodeID(id), Alive: true})
		}
	}
	t := h.Table()
	for _, g := range t.Groups {
		target, ok := replacement(t, g, members, alive)
		if !ok {
			continue
		}
		h.logger.Info("moving a data group off nodes that left the cluster", "group", g.ID, "voters", g.Voters, "to", target)
		replicas := make([]string, len(target))
		for i, id := range target {
			replicas[i] = string(id)
		}
		mctx, cancel := context.WithTimeout(ctx, moveTimeout)
		_, err := n.replica.MoveGroup(mctx, &kvstorev1.MoveGroupRequest{Name: g.Name, Replicas: replicas})
		cancel()
		if err != nil {
			h.logger.Warn("could not move a data group off nodes that left the cluster", "group", g.ID, "error", err)
		}
	}
}

// replacement is the target of data group g when some of its voters are
// not members of the cluster: the voters that are, and new replicas on
// alive members that do not host it (ranges.Place), as many as were
// lost. ok is false when g is the meta group, is moving already, lost no
// voter, or there are not enough nodes to replace them.
func replacement(t *ranges.Table, g ranges.Group, members []string, alive []ranges.Node) ([]ranges.NodeID, bool) {
	if g.ID == ranges.MetaID || (g.Target != nil && !(slices.Equal(g.Voters, g.Target) && len(g.NonVoters) == 0)) {
		return nil, false
	}
	var keep []ranges.NodeID
	for _, v := range g.Voters {
		if slices.Contains(members, string(v)) {
			keep = append(keep, v)
		}
	}
	if len(keep) == len(g.Voters) || len(keep) == 0 {
		return nil, false
	}
	candidates := slices.DeleteFunc(slices.Clone(alive), func(nd ranges.Node) bool { return hosts(g, string(nd.ID)) })
	add := ranges.Place(t, candidates, len(g.Voters)-len(keep))
	if len(add) < len(g.Voters)-len(keep) {
		// A gone voter with no node to replace it on stays: the group
		// keeps its size, and its fault tolerance once one comes.
		return nil, false
	}
	target := slices.Concat(keep, add)
	slices.Sort(target)
	return target, true
}

// drainWait bounds how long a leaving node waits for its data groups to
// move off it.
const drainWait = 15 * time.Second

// drain moves every data group this node hosts off it and off any other
// node leaving, to nodes that stay, before it leaves (kvd's SIGTERM,
// scaling down): a group whose nodes all left would lose its keys. A group
// with no node to go to keeps this replica, to be moved once the cluster
// removes this node and a node comes.
func (h *groupHost) drain(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, drainWait)
	defer cancel()
	n := h.n
	a := admin{n}
	for _, g := range h.Table().Groups {
		if g.ID == ranges.MetaID || !hosts(g, n.id) {
			continue
		}
		// The group's leader carries a move out as its table says, and
		// this node's table stops once the meta group drops it: a node
		// that stays must lead.
		h.mu.Lock()
		r, ok := h.hosted[g.ID]
		h.mu.Unlock()
		if ok && r.Raft().State() == raft.Leader {
			if err := r.Raft().LeadershipTransfer().Error(); err != nil {
				h.logger.Warn("leaving: could not hand a data group's leadership over", "group", g.ID, "error", err)
			}
		}
		// healthy is false for this node and any other leaving.
		var alive []ranges.Node
		for _, id := range n.RaftMembers() {
			if id != n.id && a.healthy(id) && !hosts(g, id) {
				alive = append(alive, ranges.Node{ID: ranges.NodeID(id), Alive: true})
			}
		}
		target := slices.DeleteFunc(slices.Clone(g.Voters), func(v ranges.NodeID) bool { return string(v) == n.id || !a.healthy(string(v)) })
		add := ranges.Place(h.Table(), alive, len(g.Voters)-len(target))
		if len(add) == 0 {
			h.logger.Warn("leaving while hosting a data group that no other node can take: it keeps this replica until one can", "group", g.ID, "name", g.Name)
			continue
		}
		target = append(target, add...)
		slices.Sort(target)
		replicas := make([]string, len(target))
		for i, id := range target {
			replicas[i] = string(id)
		}
		h.logger.Info("leaving: moving a data group off this node", "group", g.ID, "name", g.Name, "to", replicas)
		for {
			_, err := a.MoveGroup(ctx, &kvstorev1.MoveGroupRequest{Name: g.Name, Replicas: replicas})
			if err == nil {
				break
			}
			// This node may just have handed the meta group's leadership
			// over: wait for the next leader.
			if !errors.Is(err, consensus.ErrNotLeader) || ctx.Err() != nil {
				h.logger.Warn("leaving: could not move a data group off this node", "group", g.ID, "error", err)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(moveRetry):
			}
		}
	}
}
