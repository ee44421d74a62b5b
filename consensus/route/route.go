package route

import (
	"errors"
	"fmt"

	"github.com/kvstore/kvstore/consensus/ranges"
)

// Decision is where a request goes: the group owning all its keys and the
// group's epoch, which the replica checks against its own table (a stale
// route is refused and routed again; ranges' doc, "Routing").
type Decision struct {
	Group ranges.GroupID
	Epoch uint64
}

// Route returns the one group of the valid table t owning every key of
// spans, or a *CrossGroupError when they lie in more than one. Empty spans
// touch nothing; with no key at all the request goes to the meta group.
func Route(t *ranges.Table, spans []Span) (Decision, error) {
	var d Decision
	found := false
	for _, s := range spans {
		if s.Empty() {
			continue
		}
		id, epoch, err := t.LookupSpan(s.Start, s.End)
		var cross *ranges.CrossGroupError
		switch {
		case errors.As(err, &cross):
			return Decision{}, crossGroup(t, spans)
		case err != nil:
			return Decision{}, fmt.Errorf("route %s: %w", s, err)
		case found && id != d.Group:
			return Decision{}, crossGroup(t, spans)
		}
		d, found = Decision{Group: id, Epoch: epoch}, true
	}
	if !found {
		g, _ := t.Group(ranges.MetaID)
		d = Decision{Group: ranges.MetaID, Epoch: g.Epoch}
	}
	return d, nil
}
