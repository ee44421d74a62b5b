package ranges

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// GroupID names a raft group. The meta group is MetaID.
type GroupID uint64

// NodeID is a node's raft server id.
type NodeID string

const (
	// MetaID is the id of the meta group, today's raft group.
	MetaID GroupID = 0
	// MetaName is the meta group's name.
	MetaName = "meta"
	// MaxGroupsPerNode caps the data group replicas one node hosts: each
	// idle group costs heartbeats, CPU, memory and its reserved files. The
	// cap keeps idle groups under a fifth of one CPU and their files near
	// 2 GiB (bench/RESULTS.md, "idle cost of a group").
	MaxGroupsPerNode = 64
)

// Group is one raft group's entry in the table.
type Group struct {
	ID   GroupID
	Name string
	// Voters and NonVoters are the nodes hosting a replica, sorted; a
	// non-voter is catching up to be promoted.
	Voters    []NodeID
	NonVoters []NodeID
	// Target, when set (sorted), is the nodes an operator moved the group
	// to; placement moves its replicas there. Nil: placement decides.
	Target []NodeID
	// Epoch is the table Version at which this entry last changed.
	Epoch uint64
}

// hosts reports whether node n hosts a replica of g.
func (g *Group) hosts(n NodeID) bool {
	return slices.Contains(g.Voters, n) || slices.Contains(g.NonVoters, n)
}

// Span is the key range [Start, End) and the group owning it. End nil is
// +inf.
type Span struct {
	Start, End []byte
	Group      GroupID
}

// contains reports whether key lies in the span.
func (s Span) contains(key []byte) bool {
	return bytes.Compare(key, s.Start) >= 0 && (s.End == nil || bytes.Compare(key, s.End) < 0)
}

// KeyRange is a key range [Start, End), End nil for +inf.
type KeyRange struct{ Start, End []byte }

// TransferKind says what a transfer's switch does.
type TransferKind uint8

const (
	// KindCreate hands a span to a new group.
	KindCreate TransferKind = iota + 1
	// KindMerge hands all spans of a group to its neighbour and deletes it.
	KindMerge
)

func (k TransferKind) String() string {
	switch k {
	case KindCreate:
		return "create"
	case KindMerge:
		return "merge"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Transfer is a move of key ranges from one group to another, pending
// between its Begin and its Switch or Abort (see the package doc).
type Transfer struct {
	ID       uint64
	Kind     TransferKind
	From, To GroupID
	// Ranges are the key ranges handed over, sorted; each lies in one span
	// of From.
	Ranges []KeyRange
	// Frozen is From's revision at which the transfer began: From takes no
	// write to Ranges from it on, so its state of them at Frozen is what
	// To starts from.
	Frozen uint64
}

// Table is the range table: the meta group's replicated state. Its
// functions never change a table; the operations return a new one.
type Table struct {
	// Version grows by one on every change.
	Version uint64
	// NextGroup and NextTransfer are the next ids to allocate.
	NextGroup    GroupID
	NextTransfer uint64
	// Groups are sorted by id; Spans by Start; Transfers by id.
	Groups    []Group
	Spans     []Span
	Transfers []Transfer
}

// New is the table of a cluster with only the meta group, owning all keys.
func New() *Table {
	return &Table{
		Version:      1,
		NextGroup:    MetaID + 1,
		NextTransfer: 1,
		Groups:       []Group{{ID: MetaID, Name: MetaName, Epoch: 1}},
		Spans:        []Span{{Start: []byte{}, Group: MetaID}},
	}
}

// Group returns the group with the given id.
func (t *Table) Group(id GroupID) (Group, bool) {
	i, ok := t.groupIndex(id)
	if !ok {
		return Group{}, false
	}
	return t.Groups[i], true
}

// GroupByName returns the group with the given name.
func (t *Table) GroupByName(name string) (Group, bool) {
	for _, g := range t.Groups {
		if g.Name == name {
			return g, true
		}
	}
	return Group{}, false
}

func (t *Table) groupIndex(id GroupID) (int, bool) {
	return slices.BinarySearchFunc(t.Groups, id, func(g Group, id GroupID) int {
		switch {
		case g.ID < id:
			return -1
		case g.ID > id:
			return 1
		}
		return 0
	})
}

// spanIndex is the index of the span holding key.
func (t *Table) spanIndex(key []byte) int {
	// The first span starts at "", so the span is the last one starting
	// at or before key.
	i, found := slices.BinarySearchFunc(t.Spans, key, func(s Span, k []byte) int { return bytes.Compare(s.Start, k) })
	if found {
		return i
	}
	return i - 1
}

// Lookup returns the group owning key and its epoch. It is total on a
// valid table.
func (t *Table) Lookup(key []byte) (GroupID, uint64) {
	s := t.Spans[t.spanIndex(key)]
	g, _ := t.Group(s.Group)
	return s.Group, g.Epoch
}

// LookupSpan returns the one group owning every key of [start, end) (end
// nil for +inf) and its epoch, or a *CrossGroupError when the keys lie in
// more than one group.
func (t *Table) LookupSpan(start, end []byte) (GroupID, uint64, error) {
	if end != nil && bytes.Compare(start, end) >= 0 {
		return 0, 0, fmt.Errorf("%w: [%q, %q)", ErrEmptyRange, start, end)
	}
	var ids []GroupID
	for i := t.spanIndex(start); i < len(t.Spans); i++ {
		s := t.Spans[i]
		if end != nil && bytes.Compare(s.Start, end) >= 0 {
			break
		}
		if !slices.Contains(ids, s.Group) {
			ids = append(ids, s.Group)
		}
	}
	if len(ids) > 1 {
		slices.Sort(ids)
		e := &CrossGroupError{Groups: ids}
		for _, id := range ids {
			g, _ := t.Group(id)
			e.Names = append(e.Names, g.Name)
		}
		return 0, 0, e
	}
	g, _ := t.Group(ids[0])
	return ids[0], g.Epoch, nil
}

// SpansOf returns the spans group id owns, in key order.
func (t *Table) SpansOf(id GroupID) []Span {
	var out []Span
	for _, s := range t.Spans {
		if s.Group == id {
			out = append(out, s)
		}
	}
	return out
}

// TransferOf returns the pending transfer group id takes part in.
func (t *Table) TransferOf(id GroupID) (Transfer, bool) {
	for _, tr := range t.Transfers {
		if tr.From == id || tr.To == id {
			return tr, true
		}
	}
	return Transfer{}, false
}

var (
	// ErrEmptyRange refuses a key range with no key in it.
	ErrEmptyRange = errors.New("empty key range")
	// ErrInvalid is wrapped by every error of Validate and Unmarshal.
	ErrInvalid = errors.New("invalid range table")
)

// CrossGroupError refuses a request whose keys lie in more than one group:
// the server answers it with FailedPrecondition.
type CrossGroupError struct {
	// Groups are the groups' ids, sorted, and Names their names.
	Groups []GroupID
	Names  []string
}

func (e *CrossGroupError) Error() string {
	parts := make([]string, len(e.Groups))
	for i, id := range e.Groups {
		parts[i] = fmt.Sprintf("%d (%s)", id, e.Names[i])
	}
	return "the keys lie in groups " + strings.Join(parts, ", ") + "; a request must stay within one group"
}

// Validate checks the table's invariants (the package doc's "The range
// table").
func (t *Table) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if len(t.Groups) == 0 || t.Groups[0].ID != MetaID || t.Groups[0].Name != MetaName {
		return bad("no meta group")
	}
	names := map[string]bool{}
	for i, g := range t.Groups {
		if i > 0 && g.ID <= t.Groups[i-1].ID {
			return bad("groups out of order at id %d", g.ID)
		}
		if g.ID >= t.NextGroup {
			return bad("group %d not below next id %d", g.ID, t.NextGroup)
		}
		if g.ID != MetaID && !validName(g.Name) {
			return bad("group %d: bad name %q", g.ID, g.Name)
		}
		if names[g.Name] {
			return bad("group name %q twice", g.Name)
		}
		names[g.Name] = true
		if g.Epoch == 0 || g.Epoch > t.Version {
			return bad("group %d: epoch %d outside [1, version %d]", g.ID, g.Epoch, t.Version)
		}
		if g.ID != MetaID && len(g.Voters) == 0 {
			return bad("group %d has no voter", g.ID)
		}
		all := slices.Concat(g.Voters, g.NonVoters)
		if !sortedUnique(g.Voters) || !sortedUnique(g.NonVoters) || !sortedUnique(g.Target) || hasDup(all) {
			return bad("group %d: replicas not sorted and distinct", g.ID)
		}
		if g.Target != nil && len(g.Target) == 0 {
			return bad("group %d: empty target", g.ID)
		}
	}
	if len(t.Spans) == 0 || len(t.Spans[0].Start) != 0 {
		return bad("the first span does not start at the first key")
	}
	for i, s := range t.Spans {
		last := i == len(t.Spans)-1
		if last != (s.End == nil) {
			return bad("span %d: only the last span ends at +inf", i)
		}
		if s.End != nil && bytes.Compare(s.Start, s.End) >= 0 {
			return bad("span %d is empty", i)
		}
		if !last && !bytes.Equal(s.End, t.Spans[i+1].Start) {
			return bad("span %d ends at %q, the next starts at %q", i, s.End, t.Spans[i+1].Start)
		}
		if !last && s.Group == t.Spans[i+1].Group {
			return bad("spans %d and %d of group %d not coalesced", i, i+1, s.Group)
		}
		if _, ok := t.groupIndex(s.Group); !ok {
			return bad("span %d: no group %d", i, s.Group)
		}
	}
	busy := map[GroupID]bool{}
	for i, tr := range t.Transfers {
		if i > 0 && tr.ID <= t.Transfers[i-1].ID || tr.ID == 0 || tr.ID >= t.NextTransfer {
			return bad("transfer %d: id out of order or not allocated", tr.ID)
		}
		_, okFrom := t.groupIndex(tr.From)
		_, okTo := t.groupIndex(tr.To)
		if !okFrom || !okTo || tr.From == tr.To {
			return bad("transfer %d: groups %d to %d", tr.ID, tr.From, tr.To)
		}
		if busy[tr.From] || busy[tr.To] {
			return bad("transfer %d: a group in two transfers", tr.ID)
		}
		busy[tr.From], busy[tr.To] = true, true
		if tr.Kind != KindCreate && tr.Kind != KindMerge || len(tr.Ranges) == 0 {
			return bad("transfer %d: kind %v with %d ranges", tr.ID, tr.Kind, len(tr.Ranges))
		}
		if tr.Kind == KindCreate && (len(tr.Ranges) != 1 || len(t.SpansOf(tr.To)) != 0) {
			return bad("transfer %d: a create hands one range to a group owning none", tr.ID)
		}
		if tr.Kind == KindMerge && tr.From == MetaID {
			return bad("transfer %d merges the meta group", tr.ID)
		}
		for j, r := range tr.Ranges {
			if r.End != nil && bytes.Compare(r.Start, r.End) >= 0 {
				return bad("transfer %d: empty range", tr.ID)
			}
			if j > 0 && (tr.Ranges[j-1].End == nil || bytes.Compare(tr.Ranges[j-1].End, r.Start) > 0) {
				return bad("transfer %d: ranges overlap or out of order", tr.ID)
			}
			if s, ok := t.spanHolding(r); !ok || s.Group != tr.From {
				return bad("transfer %d: range [%q, %q) not in one span of group %d", tr.ID, r.Start, r.End, tr.From)
			}
		}
	}
	for _, g := range t.Groups {
		if g.ID == MetaID || len(t.SpansOf(g.ID)) > 0 {
			continue
		}
		if tr, ok := t.TransferOf(g.ID); !ok || tr.Kind != KindCreate || tr.To != g.ID {
			return bad("group %d owns no span and is not being created", g.ID)
		}
	}
	return nil
}

// spanHolding returns the one span holding all of r.
func (t *Table) spanHolding(r KeyRange) (Span, bool) {
	s := t.Spans[t.spanIndex(r.Start)]
	if s.End == nil || r.End != nil && bytes.Compare(r.End, s.End) <= 0 {
		return s, true
	}
	return Span{}, false
}

// validName: 1 to 63 letters, digits, '-', '_' or '.'.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func sortedUnique(ns []NodeID) bool {
	for i := 1; i < len(ns); i++ {
		if ns[i-1] >= ns[i] {
			return false
		}
	}
	for _, n := range ns {
		if n == "" {
			return false
		}
	}
	return true
}

func hasDup(ns []NodeID) bool {
	s := slices.Clone(ns)
	slices.Sort(s)
	return len(slices.Compact(s)) != len(ns)
}
