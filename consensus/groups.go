package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	raftcmdv1 "github.com/kvstore/kvstore/proto/kvstore/raftcmd/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"

	"github.com/kvstore/kvstore/consensus/ranges"
	"github.com/kvstore/kvstore/consensus/route"
	"github.com/kvstore/kvstore/storage"
)

// Groups (consensus/ranges' doc.go) as the state machine keeps them:
//
//   - The meta group's state holds the range table, one record
//     (storage.SetRangeTable), changed only by applying group_create and
//     group_move entries; every node of the meta group, voter or not,
//     reads it from its own state (RangeTable) and routes by it.
//   - A replica applies a put, delete or txn only if its group owns every
//     key the request touches in the table it applies with, and none of
//     them is frozen by a transfer out of the group; any other is refused,
//     the same way on every member (a WrongGroupError), and its caller
//     routes it again once its table is as new. Reads check ownership
//     after taking their view (checkReadOwner), against a table stored
//     before the state it goes with. The meta group applies with its own
//     table, in log order; a data group with the table that gave it its
//     ranges, which never change afterwards (ranges are not taken from
//     data groups yet).
//   - A new group over a range that holds no key owns it in the entry
//     that creates it. Over one that holds keys, the entry begins a
//     transfer (the protocol's steps 1 to 6, with the copy made while the
//     range is frozen rather than tailed): the range is frozen from that
//     entry's revision R on, each replica of the new group copies the
//     range at R from its own node's meta replica (storage.KV.CopySpan)
//     and starts its raft from a checkpoint at R (SeedSnapshot), so that
//     the group's revisions go on from R; its leader then switches the
//     range over (a group_move step), or any replica aborts the transfer
//     (a key attached to a lease). Between R and the switch, writes to
//     the range wait; reads are served by the meta group. No key is ever
//     served by two groups, and none is left behind.

// ErrWrongGroup is in the chain of a WrongGroupError.
var ErrWrongGroup = errors.New("the request's keys are not this group's")

// WrongGroupError refuses a write routed to a group that does not own its
// keys: the router's table was older than the replica's.
type WrongGroupError struct {
	// Group is the replica's group; TableVersion the version of the
	// table it applied with, which the router must reach before it routes
	// again.
	Group        ranges.GroupID
	TableVersion uint64
	Err          error
}

func (e *WrongGroupError) Error() string {
	return fmt.Sprintf("group %d (range table version %d): %v", e.Group, e.TableVersion, e.Err)
}

func (e *WrongGroupError) Is(target error) bool { return target == ErrWrongGroup }

func (e *WrongGroupError) Unwrap() error { return e.Err }

// checkOwner refuses msg (a request) unless the group owns every key it
// touches in t and, for a write, none of them is frozen by a transfer out
// of the group. A table with one group owns every key in it: nothing to
// check.
func checkOwner(group ranges.GroupID, t *ranges.Table, msg any, write bool) error {
	if t == nil || len(t.Groups) <= 1 {
		return nil
	}
	spans, err := route.Spans(msg)
	if err != nil {
		return rejected{fmt.Errorf("route: %w", err)}
	}
	d, err := route.Route(t, spans)
	if err != nil {
		return rejected{&WrongGroupError{Group: group, TableVersion: t.Version, Err: err}}
	}
	if d.Group != group {
		return rejected{&WrongGroupError{Group: group, TableVersion: t.Version, Err: fmt.Errorf("owned by group %d", d.Group)}}
	}
	if tr, ok := frozenBy(t, group, spans); ok && write {
		// Written once the transfer switches or aborts: the next table.
		return rejected{&WrongGroupError{Group: group, TableVersion: t.Version + 1, Err: fmt.Errorf("moving to group %d", tr.To)}}
	}
	return nil
}

// frozenBy returns the pending transfer out of group that covers part of
// spans: group takes no write there until it switches or aborts.
func frozenBy(t *ranges.Table, group ranges.GroupID, spans []route.Span) (ranges.Transfer, bool) {
	for _, tr := range t.Transfers {
		if tr.From != group {
			continue
		}
		for _, r := range tr.Ranges {
			for _, s := range spans {
				if overlaps(r, s) {
					return tr, true
				}
			}
		}
	}
	return ranges.Transfer{}, false
}

// overlaps reports whether key range r and span s share a key.
func overlaps(r ranges.KeyRange, s route.Span) bool {
	if s.Empty() {
		return false
	}
	// r.Start < s.End and s.Start < r.End, nil ends being +inf.
	return (s.End == nil || bytes.Compare(r.Start, s.End) < 0) && (r.End == nil || bytes.Compare(s.Start, r.End) < 0)
}

// checkReadOwner refuses a read (a get or range request) of keys this
// group does not own in the table it has applied, as the apply path
// refuses such writes: a router with an older table sent it here, and
// this group's state lacks what the owner took since. It is called once
// the read's view is taken; the table is stored before the state it goes
// with (FSM.ApplyBatch), and a group only ever loses spans (ranges are
// not merged back yet), so a table that still gives the group the keys
// gave them to it at the view's revision too.
func (r *Replica) checkReadOwner(msg any) error {
	var rj rejected
	if err := checkOwner(r.fsm.group, r.fsm.table.Load(), msg, false); errors.As(err, &rj) {
		return rj.error
	} else if err != nil {
		return err
	}
	return nil
}

// doGroupCreate gives req's range to a new group, if the meta group holds
// no key in it.
func doGroupCreate(b *storage.Batch, req *kvstorev1.CreateGroupRequest, table **ranges.Table) (proto.Message, error) {
	t := *table
	if t == nil {
		t = ranges.New()
	}
	start, end := req.GetStart(), req.GetEnd()
	if len(end) == 0 {
		end = nil
	}
	if _, ok := t.GroupByName(req.GetName()); ok {
		// Before the range's owner: a create retried after it took effect
		// finds its group there, whose range it now is.
		return nil, rejected{fmt.Errorf("create group %q: %w", req.GetName(), ranges.ErrNameTaken)}
	}
	if owner, _, err := t.LookupSpan(start, end); err == nil && owner != ranges.MetaID {
		return nil, rejected{fmt.Errorf("create group %q: %w: the range lies in group %d, and only the meta group's keys can be given to a new group", req.GetName(), ranges.ErrCrossesSpans, owner)}
	}
	n, err := b.Range(start, rangeEnd(end), storage.RangeOptions{CountOnly: true})
	if err != nil {
		return nil, fmt.Errorf("create group %q: count keys: %w", req.GetName(), err)
	}
	replicas := make([]ranges.NodeID, len(req.GetReplicas()))
	for i, r := range req.GetReplicas() {
		replicas[i] = ranges.NodeID(r)
	}
	var (
		next *ranges.Table
		id   ranges.GroupID
	)
	if n.Count == 0 {
		next, id, err = t.Create(req.GetName(), start, end, replicas)
	} else {
		// The keys move: the range is frozen here from this entry on, and
		// the new group starts from its state at this revision.
		var tr ranges.Transfer
		next, tr, err = t.BeginCreate(req.GetName(), start, end, replicas)
		if err == nil {
			id = tr.To
			next.Transfers[len(next.Transfers)-1].Frozen = b.Revision()
		}
	}
	if err != nil {
		return nil, rejected{fmt.Errorf("create group: %w", err)}
	}
	if err := b.SetRangeTable(next.Marshal()); err != nil {
		return nil, fmt.Errorf("create group %q: %w", req.GetName(), err)
	}
	*table = next
	return &kvstorev1.CreateGroupResponse{Group: GroupInfo(next, id)}, nil
}

// doGroupMove sets a group's target nodes, or records one step of its
// move.
func doGroupMove(b *storage.Batch, req *kvstorev1.MoveGroupRequest, table **ranges.Table) (proto.Message, error) {
	t := *table
	if t == nil {
		t = ranges.New()
	}
	var (
		next *ranges.Table
		id   ranges.GroupID
		err  error
	)
	if st := req.GetStep(); st != nil && (st.GetKind() == kvstorev1.GroupStepKind_GROUP_STEP_KIND_SWITCH || st.GetKind() == kvstorev1.GroupStepKind_GROUP_STEP_KIND_ABORT) {
		id = ranges.GroupID(st.GetGroup())
		next, err = endTransfer(t, st)
	} else if st != nil {
		id = ranges.GroupID(st.GetGroup())
		kind, ok := stepKinds[st.GetKind()]
		if !ok {
			return nil, rejected{fmt.Errorf("move group %d: unknown step %v", id, st.GetKind())}
		}
		next, err = t.Apply(ranges.Step{Group: id, Kind: kind, Node: ranges.NodeID(st.GetNode())})
	} else {
		g, _ := t.GroupByName(req.GetName())
		id = g.ID
		replicas := make([]ranges.NodeID, len(req.GetReplicas()))
		for i, r := range req.GetReplicas() {
			replicas[i] = ranges.NodeID(r)
		}
		next, err = t.Move(req.GetName(), replicas)
	}
	if err != nil {
		return nil, rejected{fmt.Errorf("move group: %w", err)}
	}
	if next != t {
		if err := b.SetRangeTable(next.Marshal()); err != nil {
			return nil, fmt.Errorf("move group %d: %w", id, err)
		}
		*table = next
	}
	return &kvstorev1.MoveGroupResponse{Group: GroupInfo(next, id)}, nil
}

// endTransfer switches or aborts the pending transfer st names; one no
// longer pending is no change, so that a repeated step does nothing.
func endTransfer(t *ranges.Table, st *kvstorev1.GroupStep) (*ranges.Table, error) {
	var next *ranges.Table
	var err error
	if st.GetKind() == kvstorev1.GroupStepKind_GROUP_STEP_KIND_SWITCH {
		next, err = t.Switch(st.GetTransfer())
	} else {
		next, err = t.Abort(st.GetTransfer())
	}
	if errors.Is(err, ranges.ErrNoTransfer) {
		return t, nil
	}
	return next, err
}

var stepKinds = map[kvstorev1.GroupStepKind]ranges.StepKind{
	kvstorev1.GroupStepKind_GROUP_STEP_KIND_ADD_NON_VOTER: ranges.AddNonVoter,
	kvstorev1.GroupStepKind_GROUP_STEP_KIND_PROMOTE:       ranges.Promote,
	kvstorev1.GroupStepKind_GROUP_STEP_KIND_REMOVE:        ranges.Remove,
}

// rangeEnd is storage's form of a range end: nil, no end, is "\x00".
func rangeEnd(end []byte) []byte {
	if end == nil {
		return []byte{0}
	}
	return end
}

// GroupInfo describes group id of t (nil if t has none).
func GroupInfo(t *ranges.Table, id ranges.GroupID) *kvstorev1.GroupInfo {
	g, ok := t.Group(id)
	if !ok {
		return nil
	}
	info := &kvstorev1.GroupInfo{Id: uint64(g.ID), Name: g.Name, Epoch: g.Epoch}
	for _, s := range t.SpansOf(id) {
		info.Ranges = append(info.Ranges, &kvstorev1.KeySpan{Start: s.Start, End: s.End})
	}
	for _, n := range g.Voters {
		info.Voters = append(info.Voters, string(n))
	}
	for _, n := range g.NonVoters {
		info.NonVoters = append(info.NonVoters, string(n))
	}
	for _, n := range g.Target {
		info.Target = append(info.Target, string(n))
	}
	return info
}

// loadTable reads the range table from the store.
func (f *FSM) loadTable() error {
	if f.group != ranges.MetaID {
		return nil
	}
	enc, err := f.kv.RangeTable()
	if err != nil {
		return fmt.Errorf("load range table: %w", err)
	}
	if enc == nil {
		f.table.Store(nil)
		return nil
	}
	t, err := ranges.Unmarshal(enc)
	if err != nil {
		return errors.Join(fmt.Errorf("load range table: %w", err), storage.ErrCorrupt)
	}
	f.table.Store(t)
	return nil
}

// RangeTable returns the range table as of the applied index: the meta
// group's, or for a data group the one it was created at. Never nil.
func (r *Replica) RangeTable() *ranges.Table {
	if t := r.fsm.table.Load(); t != nil {
		return t
	}
	return ranges.New()
}

// Group is the id of the group this replica serves.
func (r *Replica) Group() ranges.GroupID { return r.fsm.group }

// MoveGroup proposes a group's target nodes, or one step of its move
// (meta group, leader only).
func (r *Replica) MoveGroup(ctx context.Context, req *kvstorev1.MoveGroupRequest) (*kvstorev1.MoveGroupResponse, error) {
	if r.fsm.group != ranges.MetaID {
		return nil, fmt.Errorf("move group: only the meta group moves groups")
	}
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_GroupMove{GroupMove: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.MoveGroupResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// CreateGroup proposes a new group (meta group, leader only): req's
// replicas must be set (placement is the caller's).
func (r *Replica) CreateGroup(ctx context.Context, req *kvstorev1.CreateGroupRequest) (*kvstorev1.CreateGroupResponse, error) {
	if r.fsm.group != ranges.MetaID {
		return nil, fmt.Errorf("create group: only the meta group creates groups")
	}
	resp, idx, err := r.propose(ctx, &raftcmdv1.Command{Command: &raftcmdv1.Command_GroupCreate{GroupCreate: req}})
	if err != nil {
		return nil, err
	}
	out := resp.(*kvstorev1.CreateGroupResponse)
	out.Header = r.Header(idx)
	return out, nil
}

// SeedSnapshot writes into snaps a checkpoint of a state copied to index
// (storage.KV.CopySpan), with servers as the raft configuration: a replica
// of a group created over keys that already existed starts its raft after
// index, as every other replica of the group does from the same copy.
func SeedSnapshot(snaps raft.SnapshotStore, index uint64, servers []raft.Server, trans raft.Transport) error {
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{Servers: servers}, index, trans)
	if err != nil {
		return fmt.Errorf("seed snapshot at %d: %w", index, err)
	}
	return checkpointSnapshot(index).Persist(sink)
}
