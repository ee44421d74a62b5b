package ranges

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

var (
	// ErrNoGroup: no group has the given name or id.
	ErrNoGroup = errors.New("no such group")
	// ErrNameTaken: another group has the name.
	ErrNameTaken = errors.New("group name taken")
	// ErrBadName: names are 1 to 63 letters, digits, '-', '_' or '.'.
	ErrBadName = errors.New("bad group name")
	// ErrBadReplicas: replicas are one or more distinct, non-empty node ids.
	ErrBadReplicas = errors.New("bad replicas")
	// ErrMetaGroup: the meta group is never merged or moved here.
	ErrMetaGroup = errors.New("the meta group cannot be merged or moved")
	// ErrCrossesSpans: a new group's range must lie in one span of one group.
	ErrCrossesSpans = errors.New("the range is not inside one span of one group")
	// ErrEmptiesGroup: a new group's range would take every key of a data
	// group; merge that group or move its replicas instead.
	ErrEmptiesGroup = errors.New("the range is all a data group owns")
	// ErrBusy: a group takes part in one transfer at a time.
	ErrBusy = errors.New("the group is in a transfer")
	// ErrNoTransfer: the transfer is not pending (already switched,
	// aborted, or never begun); a switch or abort naming it is a no-op.
	ErrNoTransfer = errors.New("no such pending transfer")
	// ErrBadStep: a placement step does not fit the table.
	ErrBadStep = errors.New("step does not apply")
)

// Create returns the table with a new group name, hosted by replicas
// (all voters), owning [start, end) (end nil for +inf), which must lie in
// one span of one group not in a transfer and not be all a data group
// owns (the meta group may be left with nothing). It is BeginCreate and Switch
// in one change. The new group's id is returned.
func (t *Table) Create(name string, start, end []byte, replicas []NodeID) (*Table, GroupID, error) {
	n, tr, err := t.BeginCreate(name, start, end, replicas)
	if err != nil {
		return nil, 0, err
	}
	// Done in one change: no transfer stays pending, no id is used.
	n.Transfers = slices.DeleteFunc(n.Transfers, func(x Transfer) bool { return x.ID == tr.ID })
	n.NextTransfer--
	n.assign(tr)
	return n, tr.To, nil
}

// BeginCreate returns the table with a new group, owning no span yet, and
// a pending create transfer of [start, end) to it (step 1 of the
// protocol); see Create for the conditions.
func (t *Table) BeginCreate(name string, start, end []byte, replicas []NodeID) (*Table, Transfer, error) {
	r := KeyRange{Start: bytes.Clone(start), End: bytes.Clone(end)}
	if r.Start == nil {
		r.Start = []byte{}
	}
	switch {
	case !validName(name) || name == MetaName:
		return nil, Transfer{}, fmt.Errorf("create %q: %w", name, ErrBadName)
	case end != nil && bytes.Compare(start, end) >= 0:
		return nil, Transfer{}, fmt.Errorf("create %q: [%q, %q): %w", name, start, end, ErrEmptyRange)
	}
	if _, ok := t.GroupByName(name); ok {
		return nil, Transfer{}, fmt.Errorf("create %q: %w", name, ErrNameTaken)
	}
	reps, err := replicaSet(replicas)
	if err != nil {
		return nil, Transfer{}, fmt.Errorf("create %q: %w", name, err)
	}
	s, ok := t.spanHolding(r)
	if !ok {
		return nil, Transfer{}, fmt.Errorf("create %q: [%q, %q): %w", name, start, end, ErrCrossesSpans)
	}
	if _, busy := t.TransferOf(s.Group); busy {
		return nil, Transfer{}, fmt.Errorf("create %q: owner %d: %w", name, s.Group, ErrBusy)
	}
	if s.Group != MetaID && len(t.SpansOf(s.Group)) == 1 && bytes.Equal(r.Start, s.Start) && bytes.Equal(r.End, s.End) && (r.End == nil) == (s.End == nil) {
		return nil, Transfer{}, fmt.Errorf("create %q: owner %d: %w", name, s.Group, ErrEmptiesGroup)
	}
	n := t.next()
	id := n.NextGroup
	n.NextGroup++
	n.Groups = append(n.Groups, Group{ID: id, Name: name, Voters: reps, Epoch: n.Version})
	tr := Transfer{ID: n.NextTransfer, Kind: KindCreate, From: s.Group, To: id, Ranges: []KeyRange{r}}
	n.NextTransfer++
	n.Transfers = append(n.Transfers, tr)
	return n, tr, nil
}

// Merge returns the table with the spans of group name handed to its
// neighbour and the group deleted. The neighbour is the owner of the key
// just before the group's first span, else of the span after it. It is
// BeginMerge and Switch in one change.
func (t *Table) Merge(name string) (*Table, error) {
	n, tr, err := t.BeginMerge(name)
	if err != nil {
		return nil, err
	}
	// Done in one change, as in Create.
	n.Transfers = slices.DeleteFunc(n.Transfers, func(x Transfer) bool { return x.ID == tr.ID })
	n.NextTransfer--
	n.assign(tr)
	return n, nil
}

// BeginMerge returns the table with a pending merge transfer of group
// name's spans to its neighbour (see Merge).
func (t *Table) BeginMerge(name string) (*Table, Transfer, error) {
	g, ok := t.GroupByName(name)
	switch {
	case !ok:
		return nil, Transfer{}, fmt.Errorf("merge %q: %w", name, ErrNoGroup)
	case g.ID == MetaID:
		return nil, Transfer{}, fmt.Errorf("merge %q: %w", name, ErrMetaGroup)
	}
	if _, busy := t.TransferOf(g.ID); busy {
		return nil, Transfer{}, fmt.Errorf("merge %q: %w", name, ErrBusy)
	}
	to := t.neighbour(g.ID)
	if _, busy := t.TransferOf(to); busy {
		return nil, Transfer{}, fmt.Errorf("merge %q: neighbour %d: %w", name, to, ErrBusy)
	}
	tr := Transfer{Kind: KindMerge, From: g.ID, To: to}
	for _, s := range t.SpansOf(g.ID) {
		tr.Ranges = append(tr.Ranges, KeyRange{Start: s.Start, End: s.End})
	}
	n := t.next()
	tr.ID = n.NextTransfer
	n.NextTransfer++
	n.Transfers = append(n.Transfers, tr)
	return n, tr, nil
}

// neighbour is the group a merge of group id hands its spans to.
func (t *Table) neighbour(id GroupID) GroupID {
	i := slices.IndexFunc(t.Spans, func(s Span) bool { return s.Group == id })
	switch {
	case i > 0:
		return t.Spans[i-1].Group
	case i >= 0 && i+1 < len(t.Spans):
		return t.Spans[i+1].Group
	}
	return MetaID
}

// Switch returns the table with pending transfer id done: its ranges
// owned by its target, a merge's source deleted, the epochs of both
// groups bumped (step 6 of the protocol). ErrNoTransfer when it is not
// pending: a retried switch changes nothing.
func (t *Table) Switch(id uint64) (*Table, error) {
	i := slices.IndexFunc(t.Transfers, func(x Transfer) bool { return x.ID == id })
	if i < 0 {
		return nil, fmt.Errorf("switch transfer %d: %w", id, ErrNoTransfer)
	}
	n := t.next()
	tr := n.Transfers[i]
	n.Transfers = slices.Delete(n.Transfers, i, i+1)
	n.assign(tr)
	return n, nil
}

// Abort returns the table with pending transfer id dropped and a create's
// new group deleted; the source keeps its spans (step 7 of the protocol).
// ErrNoTransfer when it is not pending.
func (t *Table) Abort(id uint64) (*Table, error) {
	i := slices.IndexFunc(t.Transfers, func(x Transfer) bool { return x.ID == id })
	if i < 0 {
		return nil, fmt.Errorf("abort transfer %d: %w", id, ErrNoTransfer)
	}
	n := t.next()
	tr := n.Transfers[i]
	n.Transfers = slices.Delete(n.Transfers, i, i+1)
	if tr.Kind == KindCreate {
		n.deleteGroup(tr.To)
	}
	return n, nil
}

// Move returns the table with group name's Target set to replicas:
// placement then moves its replicas there one step at a time. Setting the
// Target it has already changes nothing.
func (t *Table) Move(name string, replicas []NodeID) (*Table, error) {
	g, ok := t.GroupByName(name)
	switch {
	case !ok:
		return nil, fmt.Errorf("move %q: %w", name, ErrNoGroup)
	case g.ID == MetaID:
		return nil, fmt.Errorf("move %q: %w", name, ErrMetaGroup)
	}
	reps, err := replicaSet(replicas)
	if err != nil {
		return nil, fmt.Errorf("move %q: %w", name, err)
	}
	if slices.Equal(reps, g.Target) {
		return t, nil
	}
	n := t.next()
	n.group(g.ID).Target = reps
	n.touch(g.ID)
	return n, nil
}

// Apply returns the table with a replica step done: AddNonVoter adds a
// non-voter, Promote makes one a voter, Remove drops a replica (never the
// last voter). TransferLeadership is no change to the table.
func (t *Table) Apply(s Step) (*Table, error) {
	g, ok := t.Group(s.Group)
	switch {
	case !ok:
		return nil, fmt.Errorf("%v: %w", s, ErrNoGroup)
	case s.Group == MetaID:
		return nil, fmt.Errorf("%v: %w", s, ErrMetaGroup)
	}
	bad := func(why string) (*Table, error) { return nil, fmt.Errorf("%v: %s: %w", s, why, ErrBadStep) }
	if s.Node == "" {
		return bad("no node")
	}
	if s.Kind == TransferLeadership {
		if !slices.Contains(g.Voters, s.Node) {
			return bad("not a voter")
		}
		return t, nil
	}
	n := t.next()
	ng := n.group(s.Group)
	switch s.Kind {
	case AddNonVoter:
		if g.hosts(s.Node) {
			return bad("already a replica")
		}
		ng.NonVoters = insertSorted(ng.NonVoters, s.Node)
	case Promote:
		if !slices.Contains(g.NonVoters, s.Node) {
			return bad("not a non-voter")
		}
		ng.NonVoters = slices.DeleteFunc(ng.NonVoters, func(x NodeID) bool { return x == s.Node })
		ng.Voters = insertSorted(ng.Voters, s.Node)
	case Remove:
		if !g.hosts(s.Node) {
			return bad("not a replica")
		}
		if len(g.Voters) == 1 && g.Voters[0] == s.Node {
			return bad("the last voter")
		}
		ng.Voters = slices.DeleteFunc(ng.Voters, func(x NodeID) bool { return x == s.Node })
		ng.NonVoters = slices.DeleteFunc(ng.NonVoters, func(x NodeID) bool { return x == s.Node })
	default:
		return bad("unknown kind")
	}
	n.touch(s.Group)
	return n, nil
}

// next is a deep copy of t at the next version.
func (t *Table) next() *Table {
	n := *t
	n.Version++
	n.Groups = make([]Group, len(t.Groups))
	for i, g := range t.Groups {
		g.Voters, g.NonVoters, g.Target = slices.Clone(g.Voters), slices.Clone(g.NonVoters), slices.Clone(g.Target)
		n.Groups[i] = g
	}
	n.Spans = slices.Clone(t.Spans)
	n.Transfers = make([]Transfer, len(t.Transfers))
	for i, tr := range t.Transfers {
		tr.Ranges = slices.Clone(tr.Ranges)
		n.Transfers[i] = tr
	}
	return &n
}

// group is a pointer to group id's entry, which must exist.
func (t *Table) group(id GroupID) *Group {
	i, _ := t.groupIndex(id)
	return &t.Groups[i]
}

// touch marks group id's entry changed at this version.
func (t *Table) touch(id GroupID) { t.group(id).Epoch = t.Version }

func (t *Table) deleteGroup(id GroupID) {
	t.Groups = slices.DeleteFunc(t.Groups, func(g Group) bool { return g.ID == id })
}

// assign hands tr's ranges to tr.To, deletes a merge's source, and bumps
// the epochs of the groups left.
func (t *Table) assign(tr Transfer) {
	for _, r := range tr.Ranges {
		t.Spans = reassign(t.Spans, r, tr.To)
	}
	t.touch(tr.To)
	if tr.Kind == KindMerge {
		t.deleteGroup(tr.From)
	} else {
		t.touch(tr.From)
	}
}

// reassign returns spans with r owned by group to, adjacent spans of one
// group coalesced.
func reassign(spans []Span, r KeyRange, to GroupID) []Span {
	var out []Span
	add := func(s Span) {
		if k := len(out) - 1; k >= 0 && out[k].Group == s.Group {
			out[k].End = s.End
			return
		}
		out = append(out, s)
	}
	for _, s := range spans {
		lo := s.Start
		if bytes.Compare(r.Start, lo) > 0 {
			lo = r.Start
		}
		hi := minEnd(s.End, r.End)
		if hi != nil && bytes.Compare(lo, hi) >= 0 {
			add(s)
			continue
		}
		if bytes.Compare(s.Start, lo) < 0 {
			add(Span{Start: s.Start, End: lo, Group: s.Group})
		}
		add(Span{Start: lo, End: hi, Group: to})
		if hi != nil && (s.End == nil || bytes.Compare(hi, s.End) < 0) {
			add(Span{Start: hi, End: s.End, Group: s.Group})
		}
	}
	return out
}

// minEnd is the lesser of two range ends, nil being +inf.
func minEnd(a, b []byte) []byte {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case bytes.Compare(a, b) <= 0:
		return a
	}
	return b
}

// replicaSet is replicas sorted, or ErrBadReplicas.
func replicaSet(replicas []NodeID) ([]NodeID, error) {
	reps := slices.Clone(replicas)
	slices.Sort(reps)
	if len(reps) == 0 || !sortedUnique(reps) {
		return nil, fmt.Errorf("%v: %w", replicas, ErrBadReplicas)
	}
	return reps, nil
}

func insertSorted(ns []NodeID, n NodeID) []NodeID {
	i, _ := slices.BinarySearch(ns, n)
	return slices.Insert(ns, i, n)
}
