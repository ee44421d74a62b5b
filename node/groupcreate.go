package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// pendingCreate returns the pending transfer that creates group id over
// keys the meta group holds.
func pendingCreate(t *ranges.Table, id ranges.GroupID) (ranges.Transfer, bool) {
	for _, tr := range t.Transfers {
		if tr.To == id && tr.Kind == ranges.KindCreate {
			return tr, true
		}
	}
	return ranges.Transfer{}, false
}

// seedWait bounds how long a new group's replica waits for this node's
// meta replica to apply the transfer's start.
const seedWait = 30 * time.Second

// seed builds r's first state from this node's own replica of the meta
// group: the transfer's ranges as of its Frozen revision, then a raft
// checkpoint there, with g's voters, so that the group's raft starts after
// it on every replica alike. A key attached to a lease aborts the
// transfer: leases stay in the meta group.
func (h *groupHost) seed(r *groupReplica, snaps raft.SnapshotStore, tr ranges.Transfer, g ranges.Group, logger *slog.Logger) error {
	n := h.n
	select {
	case <-n.kv.WaitApplied(tr.Frozen):
	case <-time.After(seedWait):
		return fmt.Errorf("this node's meta replica has not applied revision %d, where the transfer began, in %v", tr.Frozen, seedWait)
	}
	start := time.Now()
	var copied storage.CopyStats
	for _, kr := range tr.Ranges {
		st, err := n.kv.CopySpan(r.kv, kr.Start, kr.End, tr.Frozen)
		if errors.Is(err, storage.ErrLeasedKeys) {
			h.abort(g, tr, err)
		}
		if err != nil {
			return fmt.Errorf("copy the range at revision %d: %w", tr.Frozen, err)
		}
		copied.Keys += st.Keys
	}
	servers, err := h.servers(g)
	if err != nil {
		return err
	}
	if err := consensus.SeedSnapshot(snaps, tr.Frozen, servers, r.trans); err != nil {
		return err
	}
	logger.Info("copied a new group's keys from this node's meta replica", "revision", tr.Frozen, "keys", copied.Keys, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// abort ends transfer tr without a switch: the meta group keeps its keys.
func (h *groupHost) abort(g ranges.Group, tr ranges.Transfer, cause error) {
	h.logger.Warn("aborting a new group's creation", "group", g.ID, "name", g.Name, "cause", cause)
	ctx, cancel := context.WithTimeout(context.Background(), moveTimeout)
	defer cancel()
	_, err := admin{h.n}.MoveGroup(ctx, &kvstorev1.MoveGroupRequest{Step: &kvstorev1.GroupStep{
		Group: uint64(g.ID), Kind: kvstorev1.GroupStepKind_GROUP_STEP_KIND_ABORT, Transfer: tr.ID}})
	if err != nil {
		h.logger.Warn("could not abort a new group's creation", "group", g.ID, "error", err)
	}
}
