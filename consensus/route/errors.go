package route

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/consensus/ranges"
)

// CrossGroupError refuses a request whose keys lie in more than one group:
// it is served by none of them, never in part. Its chain holds the table's
// *ranges.CrossGroupError, so either type maps to FailedPrecondition.
type CrossGroupError struct {
	// Groups are the groups' ids, sorted, Names their names, and Parts[i]
	// the parts of the request's spans that lie in Groups[i], sorted and
	// coalesced.
	Groups []ranges.GroupID
	Names  []string
	Parts  [][]Span
}

// maxParts bounds the parts printed per group: a Txn may touch hundreds
// of keys, and the message goes back to the client.
const maxParts = 3

// Error names each group by id and name with the parts in it.
func (e *CrossGroupError) Error() string {
	var b strings.Builder
	b.WriteString("the keys lie in groups ")
	for i, id := range e.Groups {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d (%s): ", id, e.Names[i])
		for j, p := range e.Parts[i] {
			if j == maxParts {
				fmt.Fprintf(&b, " and %d more", len(e.Parts[i])-maxParts)
				break
			}
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString(p.String())
		}
	}
	b.WriteString("; a request must stay within one group")
	return b.String()
}

// Unwrap returns the table's error naming the same groups.
func (e *CrossGroupError) Unwrap() error {
	return &ranges.CrossGroupError{Groups: e.Groups, Names: e.Names}
}

// Code is the Connect code to answer err with: FailedPrecondition for a
// request refused for spanning groups (the client must split it, retrying
// does not help), else connect.CodeOf(err).
func Code(err error) connect.Code {
	var cross *ranges.CrossGroupError
	if errors.As(err, &cross) {
		return connect.CodeFailedPrecondition
	}
	return connect.CodeOf(err)
}

// crossGroup builds the error for spans that lie in more than one group of
// the valid table t, cutting each span at the table's span boundaries.
func crossGroup(t *ranges.Table, spans []Span) *CrossGroupError {
	parts := map[ranges.GroupID][]Span{}
	for _, s := range spans {
		if s.Empty() {
			continue
		}
		// The table span holding s.Start: the last starting at or before it.
		i := sort.Search(len(t.Spans), func(i int) bool { return bytes.Compare(t.Spans[i].Start, s.Start) > 0 }) - 1
		for ; i < len(t.Spans); i++ {
			ts := t.Spans[i]
			if s.End != nil && bytes.Compare(ts.Start, s.End) >= 0 {
				break
			}
			p := Span{Start: s.Start, End: s.End}
			if bytes.Compare(ts.Start, p.Start) > 0 {
				p.Start = ts.Start
			}
			if ts.End != nil && (p.End == nil || bytes.Compare(ts.End, p.End) < 0) {
				p.End = ts.End
			}
			parts[ts.Group] = append(parts[ts.Group], p)
		}
	}
	e := &CrossGroupError{}
	for id := range parts {
		e.Groups = append(e.Groups, id)
	}
	slices.Sort(e.Groups)
	for _, id := range e.Groups {
		g, _ := t.Group(id)
		e.Names = append(e.Names, g.Name)
		e.Parts = append(e.Parts, coalesce(parts[id]))
	}
	return e
}

// coalesce sorts ps by start and merges those that overlap or touch.
func coalesce(ps []Span) []Span {
	slices.SortFunc(ps, func(a, b Span) int { return bytes.Compare(a.Start, b.Start) })
	out := ps[:1]
	for _, p := range ps[1:] {
		last := &out[len(out)-1]
		switch {
		case last.End == nil:
			continue
		case bytes.Compare(p.Start, last.End) <= 0:
			if p.End == nil || bytes.Compare(p.End, last.End) > 0 {
				last.End = p.End
			}
		default:
			out = append(out, p)
		}
	}
	return out
}
