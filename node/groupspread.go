package node

import (
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus/ranges"
)

// spreadInterval is how often a node checks whether it leads more than
// one group.
const spreadInterval = 5 * time.Second

// spreadLeaders hands over the leadership of one data group this node
// leads when it leads more than one group (spreadPlan).
func (h *groupHost) spreadLeaders() {
	metaLeader, _ := h.n.replica.Leader()
	known := map[ranges.GroupID]string{ranges.MetaID: metaLeader}
	var led []ranges.GroupID
	h.mu.Lock()
	hosted := maps.Clone(h.hosted)
	h.mu.Unlock()
	for id, r := range hosted {
		leader, _ := r.Leader()
		known[id] = leader
		if leader == h.n.id {
			led = append(led, id)
		}
	}
	id, to, ok := spreadPlan(h.n.id, led, known, h.Table())
	if !ok {
		return
	}
	addr, err := h.n.addrs.ServerAddr(raft.ServerID(to))
	if err != nil {
		return
	}
	h.logger.Info("handing over a data group's leadership: this node leads more than one group", "group", id, "to", to)
	if err := hosted[id].Raft().LeadershipTransferToServer(raft.ServerID(to), addr).Error(); err != nil {
		h.logger.Warn("could not hand over a data group's leadership", "group", id, "to", to, "error", err)
	}
}

// spreadPlan says which data group's leadership self hands over, and to
// whom, so that a node leads one group where it can: when self leads more
// than one group (led are the data groups it leads, known the leaders it
// knows of, the meta group's included), it hands over the data group of
// the highest id that has a voter leading none of the known groups, to
// the first such voter. Nothing (ok false) otherwise: a transfer to a
// node that leads a group already would only move the excess.
func spreadPlan(self string, led []ranges.GroupID, known map[ranges.GroupID]string, t *ranges.Table) (ranges.GroupID, string, bool) {
	count := len(led)
	if known[ranges.MetaID] == self {
		count++
	}
	if count <= 1 {
		return 0, "", false
	}
	leaders := map[string]bool{}
	for _, l := range known {
		leaders[l] = true
	}
	led = slices.Clone(led)
	slices.Sort(led)
	for _, id := range slices.Backward(led) {
		g, ok := t.Group(id)
		if !ok {
			continue
		}
		for _, v := range g.Voters {
			if string(v) != self && !leaders[string(v)] {
				return id, string(v), true
			}
		}
	}
	return 0, "", false
}
