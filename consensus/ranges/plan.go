package ranges

import (
	"cmp"
	"fmt"
	"slices"
)

// Node is a node as placement sees it.
type Node struct {
	ID    NodeID
	Alive bool
}

// StepKind is what a placement step does.
type StepKind uint8

const (
	// AddNonVoter adds a replica of the group on the node, as a non-voter.
	AddNonVoter StepKind = iota + 1
	// Promote makes the node's non-voter a voter.
	Promote
	// Remove removes the node's replica.
	Remove
	// TransferLeadership hands the group's leadership to the node.
	TransferLeadership
)

func (k StepKind) String() string {
	switch k {
	case AddNonVoter:
		return "add-nonvoter"
	case Promote:
		return "promote"
	case Remove:
		return "remove"
	case TransferLeadership:
		return "transfer-leadership"
	}
	return fmt.Sprintf("step(%d)", uint8(k))
}

// Step is one placement change of one group.
type Step struct {
	Kind  StepKind
	Group GroupID
	Node  NodeID
}

func (s Step) String() string { return fmt.Sprintf("%v group %d node %s", s.Kind, s.Group, s.Node) }

// Plan decides the placement steps for the table's data groups (the
// package doc's "Placement"), sorted by group, then kind (adds, promotes,
// removes, transfers), then node: the order to apply them in. It changes
// nothing. nodes are the cluster's nodes; leaders the known leader of each
// group (the meta group's too, which counts but is never moved);
// replicas how many replicas a group without a Target wants; caughtUp
// reports whether a non-voter has caught up with its group's leader (nil:
// none has).
func Plan(t *Table, nodes []Node, leaders map[GroupID]NodeID, replicas int, caughtUp func(GroupID, NodeID) bool) []Step {
	if caughtUp == nil {
		caughtUp = func(GroupID, NodeID) bool { return false }
	}
	alive := map[NodeID]bool{}
	var up []NodeID
	for _, n := range nodes {
		if n.Alive && !alive[n.ID] {
			alive[n.ID] = true
			up = append(up, n.ID)
		}
	}
	slices.Sort(up)
	load := replicaLoad(t)
	var steps []Step
	removed := map[GroupID][]NodeID{}
	for _, g := range t.Groups {
		if g.ID == MetaID {
			continue
		}
		gs := planGroup(g, alive, up, load, replicas, caughtUp)
		for _, s := range gs {
			if s.Kind == Remove {
				removed[g.ID] = append(removed[g.ID], s.Node)
			}
		}
		steps = append(steps, gs...)
	}
	steps = append(steps, spreadLeaders(t, up, alive, leaders, removed)...)
	slices.SortStableFunc(steps, func(a, b Step) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Node, b.Node))
	})
	return steps
}

// Place returns up to n alive nodes for a new group's replicas: those
// with the fewest data group replicas first, ties by id, none at
// MaxGroupsPerNode.
func Place(t *Table, nodes []Node, n int) []NodeID {
	load := replicaLoad(t)
	var out []NodeID
	for len(out) < n {
		best, ok := pick(nodes, load, func(id NodeID) bool { return slices.Contains(out, id) })
		if !ok {
			break
		}
		out = append(out, best)
		load[best]++
	}
	slices.Sort(out)
	return out
}

// replicaLoad counts the data group replicas on each node.
func replicaLoad(t *Table) map[NodeID]int {
	load := map[NodeID]int{}
	for _, g := range t.Groups {
		if g.ID == MetaID {
			continue
		}
		for _, n := range slices.Concat(g.Voters, g.NonVoters) {
			load[n]++
		}
	}
	return load
}

// pick is the alive node, not skipped, below MaxGroupsPerNode, with the
// least load, ties by id.
func pick(nodes []Node, load map[NodeID]int, skip func(NodeID) bool) (NodeID, bool) {
	var best NodeID
	found := false
	for _, n := range nodes {
		if !n.Alive || skip(n.ID) || load[n.ID] >= MaxGroupsPerNode {
			continue
		}
		if !found || load[n.ID] < load[best] || load[n.ID] == load[best] && n.ID < best {
			best, found = n.ID, true
		}
	}
	return best, found
}

// planGroup decides one data group's replica steps; it counts its adds
// and removals in load.
func planGroup(g Group, alive map[NodeID]bool, up []NodeID, load map[NodeID]int, replicas int, caughtUp func(GroupID, NodeID) bool) []Step {
	isAlive := func(n NodeID) bool { return alive[n] }
	aliveVoters := filter(g.Voters, isAlive)
	if len(aliveVoters) < len(g.Voters)/2+1 {
		// No quorum: raft could commit no change.
		return nil
	}
	want := replicas
	if g.Target != nil {
		want = len(g.Target)
	}

	// The replicas the group should have: its Target's alive nodes, then
	// the alive replicas it has (voters first), then new ones.
	var keep []NodeID
	for _, n := range slices.Concat(g.Target, aliveVoters, filter(g.NonVoters, isAlive)) {
		if len(keep) < want && alive[n] && !slices.Contains(keep, n) {
			keep = append(keep, n)
		}
	}
	nodes := make([]Node, len(up))
	for i, n := range up {
		nodes[i] = Node{ID: n, Alive: true}
	}
	for len(keep) < want {
		n, ok := pick(nodes, load, func(n NodeID) bool { return slices.Contains(keep, n) || g.hosts(n) })
		if !ok {
			break
		}
		keep = append(keep, n)
	}

	var steps []Step
	voters := slices.Clone(g.Voters)
	// ready: the group has all the replicas it wants, each a voter
	// after this plan. A replica outside keep goes only then: a dead
	// voter with no node to replace it on stays.
	ready := len(keep) == want
	for _, n := range keep {
		switch {
		case !g.hosts(n):
			steps = append(steps, Step{AddNonVoter, g.ID, n})
			load[n]++
			ready = false
		case slices.Contains(g.NonVoters, n) && caughtUp(g.ID, n):
			steps = append(steps, Step{Promote, g.ID, n})
			voters = append(voters, n)
		case slices.Contains(g.NonVoters, n):
			ready = false
		}
	}
	// Dead replicas go first: each removal of one makes room for the
	// quorum check of the next.
	hosts := slices.Concat(g.Voters, g.NonVoters)
	slices.SortStableFunc(hosts, func(a, b NodeID) int { return cmp.Compare(boolInt(alive[a]), boolInt(alive[b])) })
	for _, n := range hosts {
		if slices.Contains(keep, n) {
			continue
		}
		if slices.Contains(g.Voters, n) {
			// Never before the replacements are voters, never below a
			// quorum of live voters, never the last voter.
			rest := slices.DeleteFunc(slices.Clone(voters), func(x NodeID) bool { return x == n })
			if !ready || len(rest) == 0 || len(filter(rest, isAlive)) < len(rest)/2+1 {
				continue
			}
			voters = rest
		}
		steps = append(steps, Step{Remove, g.ID, n})
		load[n]--
	}
	return steps
}

// spreadLeaders moves leaderships off nodes leading more than their share
// to alive voters leading fewer. removed are the replicas the plan
// removes, which take no leadership.
func spreadLeaders(t *Table, up []NodeID, alive map[NodeID]bool, leaders map[GroupID]NodeID, removed map[GroupID][]NodeID) []Step {
	if len(up) == 0 {
		return nil
	}
	led := map[NodeID][]GroupID{}
	total := 0
	for id, n := range leaders {
		if _, ok := t.Group(id); ok && alive[n] {
			led[n] = append(led[n], id)
			total++
		}
	}
	limit := (total + len(up) - 1) / len(up)
	count := func(n NodeID) int { return len(led[n]) }
	var steps []Step
	for _, from := range up {
		gs := slices.Sorted(slices.Values(led[from]))
		for _, id := range gs {
			if count(from) <= limit {
				break
			}
			if id == MetaID {
				continue
			}
			g, _ := t.Group(id)
			var to NodeID
			for _, v := range g.Voters {
				if v == from || !alive[v] || slices.Contains(removed[id], v) || count(v) >= limit {
					continue
				}
				if to == "" || count(v) < count(to) {
					to = v
				}
			}
			if to == "" {
				continue
			}
			steps = append(steps, Step{TransferLeadership, id, to})
			led[from] = slices.DeleteFunc(led[from], func(x GroupID) bool { return x == id })
			led[to] = append(led[to], id)
		}
	}
	return steps
}

func filter(ns []NodeID, keep func(NodeID) bool) []NodeID {
	var out []NodeID
	for _, n := range ns {
		if keep(n) {
			out = append(out, n)
		}
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
