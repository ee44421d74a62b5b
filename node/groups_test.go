package node

import (
	"testing"

	"github.com/kvstore/kvstore/consensus/ranges"
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
