package ranges

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

var three = []NodeID{"n1", "n2", "n3"}

// k is a key; end(s) a range end, "" for +inf.
func k(s string) []byte { return []byte(s) }

func end(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func mustCreate(t *testing.T, tb *Table, name, start, stop string) *Table {
	t.Helper()
	n, _, err := tb.Create(name, k(start), end(stop), three)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if err := n.Validate(); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return n
}

// layout renders the spans as "start-end:group ...", "" ends as "∞".
func layout(tb *Table) string {
	var parts []string
	for _, s := range tb.Spans {
		g, _ := tb.Group(s.Group)
		e := "∞"
		if s.End != nil {
			e = string(s.End)
		}
		parts = append(parts, fmt.Sprintf("%s-%s:%s", s.Start, e, g.Name))
	}
	return strings.Join(parts, " ")
}

func epoch(t *testing.T, tb *Table, name string) uint64 {
	t.Helper()
	g, ok := tb.GroupByName(name)
	if !ok {
		t.Fatalf("no group %s", name)
	}
	return g.Epoch
}

func TestNewTable(t *testing.T) {
	tb := New()
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"", "a", "\xff\xff"} {
		if g, e := tb.Lookup(k(key)); g != MetaID || e != 1 {
			t.Errorf("Lookup(%q) = %d, %d; want the meta group at epoch 1", key, g, e)
		}
	}
	if g, _, err := tb.LookupSpan(k(""), nil); err != nil || g != MetaID {
		t.Errorf("LookupSpan(all) = %d, %v", g, err)
	}
}

func TestCreateCarvesTheMiddle(t *testing.T) {
	tb := New()
	before := tb.Marshal()
	n, id, err := tb.Create("events", k("/registry/events/"), k("/registry/events0"), []NodeID{"n3", "n1", "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tb.Marshal(), before) {
		t.Error("Create changed the table it was called on")
	}
	if id != 1 || n.Version != 2 {
		t.Errorf("id %d version %d; want 1 and 2", id, n.Version)
	}
	if got, want := layout(n), "-/registry/events/:meta /registry/events/-/registry/events0:events /registry/events0-∞:meta"; got != want {
		t.Errorf("spans %s\nwant  %s", got, want)
	}
	g, _ := n.Group(id)
	if !slices.Equal(g.Voters, three) || g.Epoch != 2 {
		t.Errorf("group %+v; want voters sorted at epoch 2", g)
	}
	if e := epoch(t, n, MetaName); e != 2 {
		t.Errorf("meta epoch %d; its spans changed, want 2", e)
	}
	for key, want := range map[string]GroupID{"/registry/events/x": id, "/registry/events/": id, "/registry/events0": MetaID, "/registry/pods/a": MetaID, "a": MetaID} {
		if got, _ := n.Lookup(k(key)); got != want {
			t.Errorf("Lookup(%q) = %d, want %d", key, got, want)
		}
	}
	if got, ep, err := n.LookupSpan(k("/registry/events/a"), k("/registry/events/b")); err != nil || got != id || ep != 2 {
		t.Errorf("LookupSpan inside events = %d %d %v", got, ep, err)
	}
	_, _, err = n.LookupSpan(k("/registry/"), k("/registry/f"))
	var cross *CrossGroupError
	if !errors.As(err, &cross) || !slices.Equal(cross.Groups, []GroupID{MetaID, id}) || !slices.Equal(cross.Names, []string{MetaName, "events"}) {
		t.Errorf("LookupSpan over both = %v; want a CrossGroupError naming meta and events", err)
	}
	if _, _, err := n.LookupSpan(k("b"), k("a")); !errors.Is(err, ErrEmptyRange) {
		t.Errorf("LookupSpan of an empty range = %v", err)
	}
	// The end is exclusive: a span ending where events starts is meta's.
	if got, _, err := n.LookupSpan(k("/a"), k("/registry/events/")); err != nil || got != MetaID {
		t.Errorf("LookupSpan up to events' start = %d, %v", got, err)
	}
}

func TestCreateEdges(t *testing.T) {
	for _, tc := range []struct {
		name, start, end, want string
	}{
		{"head", "", "m", "-m:g m-∞:meta"},
		{"tail", "m", "", "-m:meta m-∞:g"},
		{"all", "", "", "-∞:g"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := mustCreate(t, New(), "g", tc.start, tc.end)
			if got := layout(n); got != tc.want {
				t.Errorf("spans %s, want %s", got, tc.want)
			}
		})
	}
}

func TestCreateSplitsADataGroup(t *testing.T) {
	tb := mustCreate(t, New(), "a", "b", "y")
	tb = mustCreate(t, tb, "c", "f", "h")
	if got, want := layout(tb), "-b:meta b-f:a f-h:c h-y:a y-∞:meta"; got != want {
		t.Errorf("spans %s, want %s", got, want)
	}
	if e := epoch(t, tb, MetaName); e != 2 {
		t.Errorf("meta epoch %d: the split did not touch it, want 2", e)
	}
	if ea := epoch(t, tb, "a"); ea != 3 {
		t.Errorf("a's epoch %d, want 3", ea)
	}
}

func TestCreateRefused(t *testing.T) {
	base := mustCreate(t, New(), "events", "e", "f")
	for _, tc := range []struct {
		name, group, start, end string
		replicas                []NodeID
		want                    error
	}{
		{"empty name", "", "a", "b", three, ErrBadName},
		{"meta name", "meta", "a", "b", three, ErrBadName},
		{"bad character", "a/b", "a", "b", three, ErrBadName},
		{"name taken", "events", "a", "b", three, ErrNameTaken},
		{"empty range", "x", "b", "b", three, ErrEmptyRange},
		{"reversed range", "x", "c", "b", three, ErrEmptyRange},
		{"across two groups", "x", "d", "e1", three, ErrCrossesSpans},
		{"across a group", "x", "d", "g", three, ErrCrossesSpans},
		{"to the end across a group", "x", "d", "", three, ErrCrossesSpans},
		{"all of a data group", "x", "e", "f", three, ErrEmptiesGroup},
		{"no replicas", "x", "a", "b", nil, ErrBadReplicas},
		{"duplicate replica", "x", "a", "b", []NodeID{"n1", "n1"}, ErrBadReplicas},
		{"empty node id", "x", "a", "b", []NodeID{""}, ErrBadReplicas},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := base.Create(tc.group, k(tc.start), end(tc.end), tc.replicas)
			if !errors.Is(err, tc.want) {
				t.Errorf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	tb := mustCreate(t, New(), "a", "c", "m")
	tb = mustCreate(t, tb, "b", "m", "p")
	tb = mustCreate(t, tb, "x", "f", "g") // a now owns two spans
	for _, tc := range []struct {
		name, group, want string
		bumped            string // the one group whose epoch changes
	}{
		{"into the group before", "b", "-c:meta c-f:a f-g:x g-p:a p-∞:meta", "a"},
		{"all spans of a group, coalesced", "a", "-f:meta f-g:x g-m:meta m-p:b p-∞:meta", MetaName},
		{"out of the middle", "x", "-c:meta c-m:a m-p:b p-∞:meta", "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := tb.Merge(tc.group)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := layout(n); got != tc.want {
				t.Errorf("spans %s\nwant  %s", got, tc.want)
			}
			if _, ok := n.GroupByName(tc.group); ok {
				t.Errorf("group %s still exists", tc.group)
			}
			for _, g := range n.Groups {
				old, _ := tb.Group(g.ID)
				if g.Name == tc.bumped {
					if g.Epoch != n.Version || n.Version != tb.Version+1 {
						t.Errorf("%s epoch %d, version %d; want both %d", g.Name, g.Epoch, n.Version, tb.Version+1)
					}
				} else if g.Epoch != old.Epoch {
					t.Errorf("%s epoch changed %d -> %d, its entry did not", g.Name, old.Epoch, g.Epoch)
				}
			}
		})
	}
}

func TestMergeAtTheHeadGoesToTheNext(t *testing.T) {
	tb := mustCreate(t, New(), "a", "", "c")
	tb = mustCreate(t, tb, "b", "c", "f")
	n, err := tb.Merge("a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := layout(n), "-f:b f-∞:meta"; got != want {
		t.Errorf("spans %s, want %s", got, want)
	}
	// A group owning every key merges into the meta group.
	all := mustCreate(t, New(), "all", "", "")
	n, err = all.Merge("all")
	if err != nil {
		t.Fatal(err)
	}
	if got := layout(n); got != "-∞:meta" {
		t.Errorf("spans %s", got)
	}
}

func TestMergeRefused(t *testing.T) {
	tb := mustCreate(t, New(), "a", "c", "m")
	if _, err := tb.Merge(MetaName); !errors.Is(err, ErrMetaGroup) {
		t.Errorf("merge meta: %v", err)
	}
	if _, err := tb.Merge("nope"); !errors.Is(err, ErrNoGroup) {
		t.Errorf("merge nope: %v", err)
	}
}

func TestMove(t *testing.T) {
	tb := mustCreate(t, New(), "a", "c", "m")
	n, err := tb.Move("a", []NodeID{"n6", "n4", "n5"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	g, _ := n.GroupByName("a")
	if !slices.Equal(g.Target, []NodeID{"n4", "n5", "n6"}) || g.Epoch != n.Version || !slices.Equal(g.Voters, three) {
		t.Errorf("after move %+v at version %d", g, n.Version)
	}
	if e := epoch(t, n, MetaName); e != epoch(t, tb, MetaName) {
		t.Error("move bumped the meta group's epoch")
	}
	same, err := n.Move("a", []NodeID{"n4", "n5", "n6"})
	if err != nil || same.Version != n.Version {
		t.Errorf("moving to the same target: version %d, %v; want no change", same.Version, err)
	}
	for _, tc := range []struct {
		name, group string
		replicas    []NodeID
		want        error
	}{
		{"meta", MetaName, three, ErrMetaGroup},
		{"unknown", "zz", three, ErrNoGroup},
		{"no replicas", "a", nil, ErrBadReplicas},
	} {
		if _, err := tb.Move(tc.group, tc.replicas); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestTransferProtocol: Begin leaves routing alone; exactly one of Switch
// and Abort takes effect, and a repeated one is ErrNoTransfer.
func TestTransferProtocol(t *testing.T) {
	tb := New()
	begun, tr, err := tb.BeginCreate("events", k("e"), k("f"), three)
	if err != nil {
		t.Fatal(err)
	}
	if err := begun.Validate(); err != nil {
		t.Fatal(err)
	}
	if g, e := begun.Lookup(k("e1")); g != MetaID || e != 1 {
		t.Errorf("during the transfer e1 routes to %d at %d; want meta, unchanged", g, e)
	}
	if got := layout(begun); got != "-∞:meta" {
		t.Errorf("spans %s", got)
	}
	if _, _, err := begun.BeginCreate("other", k("x"), k("y"), three); !errors.Is(err, ErrBusy) {
		t.Errorf("a second transfer out of meta: %v, want ErrBusy", err)
	}

	switched, err := begun.Switch(tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := switched.Validate(); err != nil {
		t.Fatal(err)
	}
	created := mustCreate(t, New(), "events", "e", "f")
	if layout(switched) != layout(created) || len(switched.Transfers) != 0 {
		t.Errorf("Begin+Switch %s, Create %s", layout(switched), layout(created))
	}
	if _, err := switched.Switch(tr.ID); !errors.Is(err, ErrNoTransfer) {
		t.Errorf("second switch: %v", err)
	}
	if _, err := switched.Abort(tr.ID); !errors.Is(err, ErrNoTransfer) {
		t.Errorf("abort after switch: %v", err)
	}

	aborted, err := begun.Abort(tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := aborted.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, ok := aborted.GroupByName("events"); ok || layout(aborted) != "-∞:meta" {
		t.Errorf("after abort: %s, group kept %v", layout(aborted), ok)
	}
	if _, err := aborted.Switch(tr.ID); !errors.Is(err, ErrNoTransfer) {
		t.Errorf("switch after abort: %v", err)
	}
	// Ids are never reused.
	again, id, err := aborted.Create("events", k("e"), k("f"), three)
	if err != nil || id != tr.To+1 {
		t.Errorf("create after abort: id %d, %v; want %d", id, err, tr.To+1)
	}
	if err := again.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestMergeProtocol(t *testing.T) {
	tb := mustCreate(t, New(), "a", "c", "m")
	tb = mustCreate(t, tb, "x", "f", "g")
	begun, tr, err := tb.BeginMerge("a")
	if err != nil {
		t.Fatal(err)
	}
	if err := begun.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(tr.Ranges) != 2 || tr.To != MetaID {
		t.Errorf("transfer %+v; want a's two spans to meta", tr)
	}
	if _, _, err := begun.BeginMerge("x"); !errors.Is(err, ErrBusy) {
		t.Errorf("merging x into a busy neighbour: %v", err)
	}
	switched, err := begun.Switch(tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	merged, _ := tb.Merge("a")
	if layout(switched) != layout(merged) {
		t.Errorf("Begin+Switch %s, Merge %s", layout(switched), layout(merged))
	}
	aborted, err := begun.Abort(tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if layout(aborted) != layout(tb) || len(aborted.Groups) != len(tb.Groups) {
		t.Errorf("abort of a merge: %s, want %s", layout(aborted), layout(tb))
	}
}

func TestApplySteps(t *testing.T) {
	tb := mustCreate(t, New(), "a", "c", "m")
	id := GroupID(1)
	steps := []Step{{AddNonVoter, id, "n4"}, {Promote, id, "n4"}, {Remove, id, "n1"}, {TransferLeadership, id, "n4"}}
	for _, s := range steps {
		n, err := tb.Apply(s)
		if err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("%v: %v", s, err)
		}
		if s.Kind != TransferLeadership && (n.Version != tb.Version+1 || epoch(t, n, "a") != n.Version) {
			t.Errorf("%v: version %d epoch %d", s, n.Version, epoch(t, n, "a"))
		}
		tb = n
	}
	g, _ := tb.Group(id)
	if !slices.Equal(g.Voters, []NodeID{"n2", "n3", "n4"}) || len(g.NonVoters) != 0 {
		t.Errorf("replicas %v / %v", g.Voters, g.NonVoters)
	}
	last := mustCreate(t, New(), "b", "c", "m")
	last, _ = last.Apply(Step{Remove, id, "n1"})
	last, _ = last.Apply(Step{Remove, id, "n2"})
	for _, s := range []Step{
		{AddNonVoter, id, "n2"}, // n2 is gone: fine, so use a host
		{Promote, id, "n3"},
		{Remove, id, "n3"},
		{Remove, id, "n9"},
		{TransferLeadership, id, "n9"},
		{AddNonVoter, MetaID, "n1"},
		{AddNonVoter, 7, "n1"},
		{AddNonVoter, id, ""},
	} {
		_, err := last.Apply(s)
		if s.Kind == AddNonVoter && s.Node == "n2" {
			if err != nil {
				t.Errorf("%v: %v", s, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v applied; want refused", s)
		}
	}
}

func TestValidateFindsBrokenTables(t *testing.T) {
	good := func() *Table { return mustCreate(t, New(), "a", "c", "m") }
	for _, tc := range []struct {
		name    string
		breakIt func(*Table)
	}{
		{"no meta group", func(tb *Table) { tb.Groups = tb.Groups[1:] }},
		{"meta renamed", func(tb *Table) { tb.Groups[0].Name = "x" }},
		{"gap", func(tb *Table) { tb.Spans[1].Start = k("d") }},
		{"overlap", func(tb *Table) { tb.Spans[1].Start = k("b") }},
		{"first span not at the first key", func(tb *Table) { tb.Spans[0].Start = k("a") }},
		{"bounded last span", func(tb *Table) { tb.Spans[2].End = k("z") }},
		{"unbounded middle span", func(tb *Table) { tb.Spans[1].End = nil }},
		{"empty span", func(tb *Table) { tb.Spans[1].End = k("c"); tb.Spans[2].Start = k("c") }},
		{"not coalesced", func(tb *Table) { tb.Spans[1].Group = MetaID }},
		{"span of no group", func(tb *Table) { tb.Spans[1].Group = 9 }},
		{"group owning nothing", func(tb *Table) {
			tb.Spans = []Span{{Start: []byte{}, Group: MetaID}}
		}},
		{"duplicate name", func(tb *Table) { tb.Groups[1].Name = "meta" }},
		{"epoch ahead of the version", func(tb *Table) { tb.Groups[1].Epoch = 99 }},
		{"zero epoch", func(tb *Table) { tb.Groups[1].Epoch = 0 }},
		{"id not allocated", func(tb *Table) { tb.NextGroup = 1 }},
		{"no voter", func(tb *Table) { tb.Groups[1].Voters = nil }},
		{"unsorted voters", func(tb *Table) { tb.Groups[1].Voters = []NodeID{"n2", "n1"} }},
		{"voter and non-voter", func(tb *Table) { tb.Groups[1].NonVoters = []NodeID{"n1"} }},
		{"empty target", func(tb *Table) { tb.Groups[1].Target = []NodeID{} }},
		{"transfer of no group", func(tb *Table) {
			tb.Transfers = []Transfer{{ID: 1, Kind: KindMerge, From: 1, To: 5, Ranges: []KeyRange{{k("c"), k("m")}}}}
			tb.NextTransfer = 2
		}},
		{"transfer of a range the source does not own", func(tb *Table) {
			tb.Transfers = []Transfer{{ID: 1, Kind: KindMerge, From: 1, To: 0, Ranges: []KeyRange{{k("a"), k("d")}}}}
			tb.NextTransfer = 2
		}},
		{"merge of meta", func(tb *Table) {
			tb.Transfers = []Transfer{{ID: 1, Kind: KindMerge, From: 0, To: 1, Ranges: []KeyRange{{k("a"), k("b")}}}}
			tb.NextTransfer = 2
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := good()
			tc.breakIt(tb)
			if err := tb.Validate(); !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate = %v; want ErrInvalid", err)
			}
		})
	}
}
