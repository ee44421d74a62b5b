package node

import (
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/storage"
)

func TestSpreadPlan(t *testing.T) {
	tab := ranges.New()
	var err error
	for _, g := range []struct {
		name, prefix string
		voters       []ranges.NodeID
	}{
		{"a", "/a/", []ranges.NodeID{"n1", "n2", "n3"}},
		{"b", "/b/", []ranges.NodeID{"n1", "n4", "n5"}},
	} {
		if tab, _, err = tab.Create(g.name, []byte(g.prefix), []byte(g.prefix+"\xff"), g.voters); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name   string
		led    []ranges.GroupID
		known  map[ranges.GroupID]string
		wantID ranges.GroupID
		wantTo string
		wantOK bool
	}{
		{"leads one data group", []ranges.GroupID{1}, map[ranges.GroupID]string{0: "n2", 1: "n1"}, 0, "", false},
		{"leads the meta group only", nil, map[ranges.GroupID]string{0: "n1"}, 0, "", false},
		{"leads meta and a: a goes to a voter leading nothing", []ranges.GroupID{1}, map[ranges.GroupID]string{0: "n1", 1: "n1"}, 1, "n2", true},
		{"skips voters that lead", []ranges.GroupID{1}, map[ranges.GroupID]string{0: "n1", 1: "n1", 2: "n2"}, 1, "n3", true},
		{"the highest id first", []ranges.GroupID{1, 2}, map[ranges.GroupID]string{0: "n3", 1: "n1", 2: "n1"}, 2, "n4", true},
		{"no voter free: stays", []ranges.GroupID{1}, map[ranges.GroupID]string{0: "n1", 1: "n1", 2: "n2", 3: "n3"}, 0, "", false},
	} {
		id, to, ok := spreadPlan("n1", c.led, c.known, tab)
		if id != c.wantID || to != c.wantTo || ok != c.wantOK {
			t.Errorf("%s: got %d %q %v, want %d %q %v", c.name, id, to, ok, c.wantID, c.wantTo, c.wantOK)
		}
	}
}

func TestNextMoveStep(t *testing.T) {
	v, nv := raft.Voter, raft.Nonvoter
	g := func(voters, nonVoters, target []ranges.NodeID) ranges.Group {
		return ranges.Group{ID: 1, Voters: voters, NonVoters: nonVoters, Target: target}
	}
	ns := func(ids ...ranges.NodeID) []ranges.NodeID { return ids }
	for _, c := range []struct {
		name     string
		g        ranges.Group
		cfg      map[string]raft.ServerSuffrage
		wantKind moveKind
		wantNode string
	}{
		{"no target", g(ns("n1", "n2", "n3"), nil, nil), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v}, moveNone, ""},
		{"done", g(ns("n1", "n2", "n3"), nil, ns("n1", "n2", "n3")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v}, moveNone, ""},
		{"a new node goes in the table first", g(ns("n1", "n2", "n3"), nil, ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v}, moveTableAdd, "n4"},
		{"then into raft as a non-voter", g(ns("n1", "n2", "n3"), ns("n4"), ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v}, moveRaftAdd, "n4"},
		{"then promoted in raft", g(ns("n1", "n2", "n3"), ns("n4"), ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v, "n4": nv}, moveRaftPromote, "n4"},
		{"then in the table", g(ns("n1", "n2", "n3"), ns("n4"), ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v, "n4": v}, moveTablePromote, "n4"},
		{"an old voter leaves raft first", g(ns("n1", "n2", "n3", "n4"), nil, ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v, "n4": v}, moveRaftRemove, "n1"},
		{"then the table", g(ns("n1", "n2", "n3", "n4"), nil, ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n2": v, "n3": v, "n4": v}, moveTableRemove, "n1"},
		{"a leader to be removed hands over first", g(ns("n1", "n2", "n3", "n4"), nil, ns("n2", "n3", "n4")), map[string]raft.ServerSuffrage{"n1": v, "n2": v, "n3": v, "n4": v}, moveHandOver, ""},
	} {
		self := "n2"
		if c.wantKind == moveHandOver {
			self = "n1"
		}
		kind, node := nextMoveStep(self, c.g, c.cfg)
		if kind != c.wantKind || node != c.wantNode {
			t.Errorf("%s: got %v %q, want %v %q", c.name, kind, node, c.wantKind, c.wantNode)
		}
	}
}

func TestReplacement(t *testing.T) {
	tab, id, err := ranges.New().Create("b", []byte("/b/"), []byte("/b0"), []ranges.NodeID{"n2", "n3", "n4"})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := tab.Group(id)
	alive := func(ids ...string) []ranges.Node {
		var out []ranges.Node
		for _, id := range ids {
			out = append(out, ranges.Node{ID: ranges.NodeID(id), Alive: true})
		}
		return out
	}
	for _, c := range []struct {
		name    string
		members []string
		alive   []ranges.Node
		want    []ranges.NodeID
		ok      bool
	}{
		{"every voter a member", []string{"n1", "n2", "n3", "n4"}, alive("n1", "n2", "n3", "n4"), nil, false},
		{"n4 gone, n1 takes its place", []string{"n1", "n2", "n3"}, alive("n1", "n2", "n3"), []ranges.NodeID{"n1", "n2", "n3"}, true},
		{"n4 gone, no node to replace it", []string{"n2", "n3"}, alive("n2", "n3"), nil, false},
		{"n4 gone, n1 dead too", []string{"n1", "n2", "n3"}, alive("n2", "n3"), nil, false},
	} {
		got, ok := replacement(tab, g, c.members, c.alive)
		if ok != c.ok || !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v %v, want %v %v", c.name, got, ok, c.want, c.ok)
		}
	}
	meta, _ := tab.Group(ranges.MetaID)
	if _, ok := replacement(tab, meta, []string{"n1"}, alive("n1")); ok {
		t.Error("the meta group is not moved")
	}
}

// TestListHosted: the hosted replicas come by group id, cut at the limit,
// with the count of all of them and of those whose move is under way (a
// target reached is no move).
func TestListHosted(t *testing.T) {
	tab := ranges.New()
	var err error
	for _, name := range []string{"a", "b", "c", "d"} {
		prefix := "/" + name + "/"
		if tab, _, err = tab.Create(name, []byte(prefix), []byte(prefix+"\xff"), []ranges.NodeID{"n1", "n2"}); err != nil {
			t.Fatal(err)
		}
	}
	// b moves to where it is (reached), c and d elsewhere (under way).
	for _, m := range []struct {
		name string
		to   []ranges.NodeID
	}{{"b", []ranges.NodeID{"n1", "n2"}}, {"c", []ranges.NodeID{"n1", "n3"}}, {"d", []ranges.NodeID{"n2", "n3"}}} {
		if tab, err = tab.Move(m.name, m.to); err != nil {
			t.Fatal(err)
		}
	}
	h := newGroupHost(&Node{}, Config{}, storage.Sizing{})
	h.setTable(tab)
	for _, name := range []string{"d", "a", "b", "c"} {
		g, _ := tab.GroupByName(name)
		h.hosted[g.ID] = &groupReplica{name: name}
	}
	list, hosted, moving := h.listHosted(3)
	if hosted != 4 || moving != 2 || len(list) != 3 {
		t.Fatalf("hosted %d, moving %d, listed %d; want 4, 2, 3", hosted, moving, len(list))
	}
	for i, want := range []string{"a", "b", "c"} {
		if list[i].Name != want || list[i].r != h.hosted[list[i].ID] {
			t.Errorf("listed %d: %d %q, want %q", i, list[i].ID, list[i].Name, want)
		}
	}
}
