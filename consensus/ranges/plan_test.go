package ranges

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// planTable has data groups named g1, g2, ... with the given voters, one
// span each.
func planTable(t *testing.T, voters ...[]NodeID) *Table {
	t.Helper()
	tb := New()
	for i, vs := range voters {
		var err error
		start := fmt.Sprintf("k%03d", i)
		tb, _, err = tb.Create(fmt.Sprintf("g%d", i+1), k(start), k(start+"~"), vs)
		if err != nil {
			t.Fatal(err)
		}
	}
	return tb
}

func nodes(alive string, dead ...string) []Node {
	var out []Node
	for _, id := range strings.Fields(alive) {
		out = append(out, Node{ID: NodeID(id), Alive: true})
	}
	for _, id := range dead {
		out = append(out, Node{ID: NodeID(id)})
	}
	return out
}

func ids(s string) []NodeID {
	var out []NodeID
	for _, f := range strings.Fields(s) {
		out = append(out, NodeID(f))
	}
	return out
}

func stepsText(steps []Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, fmt.Sprintf("%v %d %s", s.Kind, s.Group, s.Node))
	}
	return out
}

// edit changes group id of a table built by planTable in place.
func edit(tb *Table, id GroupID, f func(*Group)) *Table {
	f(tb.group(id))
	return tb
}

// TestPlan: each placement rule, on a table (as node/reconcile_plan_test.go
// tests the reconcile plan).
func TestPlan(t *testing.T) {
	n123 := ids("n1 n2 n3")
	for _, tc := range []struct {
		name     string
		table    func(*testing.T) *Table
		nodes    []Node
		leaders  map[GroupID]NodeID
		replicas int
		caughtUp string // "group:node ..." reported caught up
		want     []string
	}{
		{
			name:     "nothing to do",
			table:    func(t *testing.T) *Table { return planTable(t, n123, n123, n123) },
			nodes:    nodes("n1 n2 n3"),
			leaders:  map[GroupID]NodeID{0: "n1", 1: "n1", 2: "n2", 3: "n3"},
			replicas: 3,
		},
		{
			name:     "only the meta group",
			table:    func(*testing.T) *Table { return New() },
			nodes:    nodes("n1 n2 n3"),
			leaders:  map[GroupID]NodeID{0: "n1"},
			replicas: 3,
		},
		{
			name:     "a dead voter gets a replacement non-voter, ties by id",
			table:    func(t *testing.T) *Table { return planTable(t, n123) },
			nodes:    nodes("n1 n2 n4 n5", "n3"),
			replicas: 3,
			want:     []string{"add-nonvoter 1 n4"},
		},
		{
			name:     "the replacement goes to the node with the fewest replicas",
			table:    func(t *testing.T) *Table { return planTable(t, n123, ids("n1 n2 n4")) },
			nodes:    nodes("n1 n2 n4 n5", "n3"),
			replicas: 3,
			want:     []string{"add-nonvoter 1 n5"},
		},
		{
			name: "no promotion before catch-up, no removal before the replacement votes",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.NonVoters = ids("n4") })
			},
			nodes:    nodes("n1 n2 n4", "n3"),
			replicas: 3,
		},
		{
			name: "caught up: promote, then remove the dead voter",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.NonVoters = ids("n4") })
			},
			nodes:    nodes("n1 n2 n4", "n3"),
			replicas: 3,
			caughtUp: "1:n4",
			want:     []string{"promote 1 n4", "remove 1 n3"},
		},
		{
			name: "a dead non-voter is removed at once and replaced",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, ids("n1 n2")), 1, func(g *Group) { g.NonVoters = ids("n3") })
			},
			nodes:    nodes("n1 n2 n4", "n3"),
			replicas: 3,
			want:     []string{"add-nonvoter 1 n4", "remove 1 n3"},
		},
		{
			name:     "no quorum alive: no step at all",
			table:    func(t *testing.T) *Table { return planTable(t, n123) },
			nodes:    nodes("n1 n4 n5", "n2", "n3"),
			replicas: 3,
		},
		{
			name:     "removals never leave fewer than a quorum of voters alive",
			table:    func(t *testing.T) *Table { return planTable(t, ids("n1 n2 n3 n4 n5")) },
			nodes:    nodes("n1 n2 n3", "n4", "n5"),
			replicas: 1,
			// Dead first; then n2 would leave {n1 n3} alive of 2, fine,
			// and n3 {n1}, fine: the quorum holds at each removal.
			want: []string{"remove 1 n2", "remove 1 n3", "remove 1 n4", "remove 1 n5"},
		},
		{
			name:     "an alive voter is not removed while it is needed for a quorum",
			table:    func(t *testing.T) *Table { return planTable(t, ids("n1 n2 n3 n4 n5")) },
			nodes:    nodes("n1 n2 n3 n4", "n5"),
			replicas: 1,
			// After removing n5: {n1..n4}, 4 alive; n2: {n1 n3 n4};
			// n3: {n1 n4}; n4: {n1}: each keeps its live quorum.
			want: []string{"remove 1 n2", "remove 1 n3", "remove 1 n4", "remove 1 n5"},
		},
		{
			name: "move to a target: add its nodes as non-voters first",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.Target = ids("n4 n5 n6") })
			},
			nodes:    nodes("n1 n2 n3 n4 n5 n6"),
			replicas: 3,
			want:     []string{"add-nonvoter 1 n4", "add-nonvoter 1 n5", "add-nonvoter 1 n6"},
		},
		{
			name: "move to a target: old voters go only when all new ones vote",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.Target = ids("n4 n5 n6"); g.NonVoters = ids("n4 n5 n6") })
			},
			nodes:    nodes("n1 n2 n3 n4 n5 n6"),
			replicas: 3,
			caughtUp: "1:n4 1:n5",
			want:     []string{"promote 1 n4", "promote 1 n5"},
		},
		{
			name: "move to a target: done",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.Target = ids("n4 n5 n6"); g.NonVoters = ids("n4 n5 n6") })
			},
			nodes:    nodes("n1 n2 n3 n4 n5 n6"),
			replicas: 3,
			caughtUp: "1:n4 1:n5 1:n6",
			want:     []string{"promote 1 n4", "promote 1 n5", "promote 1 n6", "remove 1 n1", "remove 1 n2", "remove 1 n3"},
		},
		{
			name: "a dead target node is stood in for",
			table: func(t *testing.T) *Table {
				return edit(planTable(t, n123), 1, func(g *Group) { g.Target = ids("n1 n2 n4") })
			},
			nodes:    nodes("n1 n2 n3 n5", "n4"),
			replicas: 3,
			want:     nil, // n3 already stands in: it is kept, nothing to add
		},
		{
			name: "a group wider than the alive nodes keeps what it has",
			table: func(t *testing.T) *Table {
				return planTable(t, n123)
			},
			nodes:    nodes("n1 n2 n3"),
			replicas: 5,
		},
		{
			name:     "leaders spread: one node leads all",
			table:    func(t *testing.T) *Table { return planTable(t, n123, n123, n123) },
			nodes:    nodes("n1 n2 n3"),
			leaders:  map[GroupID]NodeID{1: "n1", 2: "n1", 3: "n1"},
			replicas: 3,
			want:     []string{"transfer-leadership 1 n2", "transfer-leadership 2 n3"},
		},
		{
			name:     "leaders spread: the meta leader counts but stays",
			table:    func(t *testing.T) *Table { return planTable(t, n123, n123, n123) },
			nodes:    nodes("n1 n2 n3"),
			leaders:  map[GroupID]NodeID{0: "n1", 1: "n1", 2: "n1", 3: "n2"},
			replicas: 3,
			// 4 groups on 3 nodes: at most 2 each.
			want: []string{"transfer-leadership 1 n3"},
		},
		{
			name:     "leaders stay when no other voter could take one",
			table:    func(t *testing.T) *Table { return planTable(t, ids("n1"), ids("n1")) },
			nodes:    nodes("n1 n2"),
			leaders:  map[GroupID]NodeID{1: "n1", 2: "n1"},
			replicas: 1,
		},
		{
			name:     "leadership never goes to a dead voter or one being removed",
			table:    func(t *testing.T) *Table { return planTable(t, n123, n123) },
			nodes:    nodes("n1 n2", "n3"),
			leaders:  map[GroupID]NodeID{1: "n1", 2: "n1"},
			replicas: 2,
			want:     []string{"remove 1 n3", "transfer-leadership 1 n2", "remove 2 n3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := tc.table(t)
			if err := tb.Validate(); err != nil {
				t.Fatal(err)
			}
			caught := strings.Fields(tc.caughtUp)
			cu := func(g GroupID, n NodeID) bool { return slices.Contains(caught, fmt.Sprintf("%d:%s", g, n)) }
			got := stepsText(Plan(tb, tc.nodes, tc.leaders, tc.replicas, cu))
			if !slices.Equal(got, tc.want) {
				t.Errorf("plan\n  %q\nwant\n  %q", got, tc.want)
			}
			// The plan is a function of its input.
			for range 5 {
				if again := stepsText(Plan(tb, tc.nodes, tc.leaders, tc.replicas, cu)); !slices.Equal(again, got) {
					t.Fatalf("plans differ: %q then %q", got, again)
				}
			}
		})
	}
}

func TestPlanRespectsTheCap(t *testing.T) {
	full := make([][]NodeID, MaxGroupsPerNode)
	for i := range full {
		full[i] = ids("n1 n2 n4")
	}
	tb := planTable(t, append(full, ids("n1 n2 n3"))...)
	last := GroupID(len(full) + 1)
	steps := Plan(tb, nodes("n1 n2 n4", "n3"), nil, 3, nil)
	if len(steps) != 0 {
		t.Errorf("plan %q: n4 is at the cap, want nothing", stepsText(steps))
	}
	steps = Plan(tb, nodes("n1 n2 n4 n5", "n3"), nil, 3, nil)
	if got := stepsText(steps); !slices.Equal(got, []string{fmt.Sprintf("add-nonvoter %d n5", last)}) {
		t.Errorf("plan %q, want n5 added", got)
	}
}

func TestPlace(t *testing.T) {
	tb := planTable(t, ids("n1 n2 n3"), ids("n1 n2 n4"))
	for _, tc := range []struct {
		nodes []Node
		n     int
		want  string
	}{
		{nodes("n1 n2 n3 n4 n5 n6"), 3, "n5 n6 n3"},
		{nodes("n1 n2 n3 n4 n6", "n5"), 3, "n6 n3 n4"},
		{nodes("n1 n2"), 3, "n1 n2"},
		{nodes(""), 3, ""},
	} {
		got := Place(tb, tc.nodes, tc.n)
		want := ids(tc.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("Place(%v, %d) = %v, want %v", tc.nodes, tc.n, got, want)
		}
	}
}

// TestPlanConverges: applying each plan's steps to the table, with every
// non-voter caught up, reaches a table the plan leaves alone, in which
// every group has its replicas on alive nodes and the leaders are spread.
func TestPlanConverges(t *testing.T) {
	n123 := ids("n1 n2 n3")
	tb := planTable(t, n123, n123, ids("n2 n3 n4"), n123)
	tb = edit(tb, 2, func(g *Group) { g.Target = ids("n4 n5 n6") })
	all := nodes("n2 n3 n4 n5 n6", "n1")
	leaders := map[GroupID]NodeID{0: "n2", 1: "n2", 2: "n2", 3: "n2", 4: "n2"}
	for pass := 0; ; pass++ {
		if pass == 10 {
			t.Fatal("no fixed point after 10 passes")
		}
		steps := Plan(tb, all, leaders, 3, func(GroupID, NodeID) bool { return true })
		if len(steps) == 0 {
			break
		}
		for _, s := range steps {
			n, err := tb.Apply(s)
			if err != nil {
				t.Fatalf("pass %d: %v", pass, err)
			}
			if s.Kind == TransferLeadership {
				leaders[s.Group] = s.Node
			}
			tb = n
		}
		if err := tb.Validate(); err != nil {
			t.Fatal(err)
		}
		// A leader removed from its group: raft elects another voter.
		for id, l := range leaders {
			if g, ok := tb.Group(id); ok && id != MetaID && !slices.Contains(g.Voters, l) {
				leaders[id] = g.Voters[0]
			}
		}
	}
	led := map[NodeID]int{}
	for _, l := range leaders {
		led[l]++
	}
	for _, g := range tb.Groups[1:] {
		if len(g.Voters) != 3 || len(g.NonVoters) != 0 || slices.Contains(g.Voters, "n1") {
			t.Errorf("group %d ends with %v / %v", g.ID, g.Voters, g.NonVoters)
		}
		if g.ID == 2 && !slices.Equal(g.Voters, ids("n4 n5 n6")) {
			t.Errorf("moved group ends on %v", g.Voters)
		}
	}
	// 5 groups over 5 alive nodes: a node leading two has no group with
	// a voter leading none.
	for id, l := range leaders {
		g, _ := tb.Group(id)
		if led[l] < 2 || id == MetaID {
			continue
		}
		for _, v := range g.Voters {
			if led[v] == 0 {
				t.Errorf("%s leads %d groups, and %s, a voter of group %d, leads none", l, led[l], v, id)
			}
		}
	}
}
