package node

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// CreateGroup implements api.Admin: on the meta leader, it places the
// group's replicas when the request names none and proposes the group; a
// follower hands the call to the leader.
func (a admin) CreateGroup(ctx context.Context, req *kvstorev1.CreateGroupRequest) (*kvstorev1.CreateGroupResponse, error) {
	n := a.n
	if n.replica.Raft().State() != raft.Leader {
		_, addr := n.replica.Leader()
		if addr == "" {
			return nil, fmt.Errorf("%w: no leader is known", consensus.ErrNotLeader)
		}
		return n.peers.CreateGroup(ctx, addr, req)
	}
	req = proto.Clone(req).(*kvstorev1.CreateGroupRequest)
	if len(req.GetReplicas()) == 0 {
		want := int(req.GetReplicaCount())
		if want == 0 {
			want = defaultGroupReplicas
		}
		var alive []ranges.Node
		for _, id := range n.RaftMembers() {
			if a.healthy(id) {
				alive = append(alive, ranges.Node{ID: ranges.NodeID(id), Alive: true})
			}
		}
		for _, id := range ranges.Place(n.replica.RangeTable(), alive, want) {
			req.Replicas = append(req.Replicas, string(id))
		}
		if len(req.Replicas) == 0 {
			return nil, fmt.Errorf("create group %q: no live node can host it", req.GetName())
		}
	}
	for _, id := range req.GetReplicas() {
		if !slices.Contains(n.RaftMembers(), id) {
			return nil, fmt.Errorf("create group %q: %w: %q", req.GetName(), api.ErrUnknownMember, id)
		}
	}
	return n.replica.CreateGroup(ctx, req)
}

// defaultGroupReplicas is how many replicas a group gets when the
// request says neither which nor how many.
const defaultGroupReplicas = 3

// ListGroups implements api.Admin.
func (a admin) ListGroups(ctx context.Context, local bool) (*kvstorev1.ListGroupsResponse, error) {
	h := a.n.dataGroups
	if !local {
		// The table is read from this node's meta replica: as new as any
		// answer the cluster gave before, such as a create's abort.
		if err := a.n.replica.Barrier(ctx); err != nil {
			return nil, err
		}
	}
	t := h.Table()
	st, err := a.n.replica.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := &kvstorev1.ListGroupsResponse{Header: st.GetHeader(), TableVersion: t.Version}
	for _, g := range t.Groups {
		info := h.groupInfo(ctx, t, g.ID)
		if info.GetLeader() == "" && !local {
			info = h.askReplicas(ctx, g, info)
		}
		out.Groups = append(out.Groups, info)
	}
	return out, nil
}

// askGroupTimeout bounds asking one node about a group it hosts.
const askGroupTimeout = time.Second

// askReplicas fills info, of a group this node does not host, from the
// first of its voters that knows its leader.
func (h *groupHost) askReplicas(ctx context.Context, g ranges.Group, info *kvstorev1.GroupInfo) *kvstorev1.GroupInfo {
	for _, v := range g.Voters {
		addr := h.Addr(string(v))
		if addr == "" || string(v) == h.n.id {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, askGroupTimeout)
		resp, err := h.n.peers.LocalGroups(actx, addr)
		cancel()
		if err != nil {
			continue
		}
		for _, gi := range resp.GetGroups() {
			if gi.GetId() == uint64(g.ID) && gi.GetLeader() != "" {
				return gi
			}
		}
	}
	return info
}
