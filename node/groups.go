package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/consensus/ranges"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// groupsDir holds, in the data dir, one directory per data group this
// node hosts a replica of: its raft log, snapshots and key-value state.
const groupsDir = "groups"

// groupHost runs this node's replicas of data groups: it starts one for
// every group whose entry in the range table names this node, as the meta
// group applies it. A group's replicas bootstrap it together, with the
// voters the table names (as bootstrap-expect does for the meta group).
// It implements api.Groups.
type groupHost struct {
	n      *Node
	cfg    Config
	sizing storage.Sizing
	logger *slog.Logger

	// table is read on every request: no lock.
	table atomic.Pointer[ranges.Table]

	mu            sync.Mutex
	changed       chan struct{}      // closed and replaced when table changes
	changedCtx    context.Context    // likewise, as a context
	cancelChanged context.CancelFunc // ends changedCtx
	hosted        map[ranges.GroupID]*groupReplica
	closed        bool
	wake          chan struct{} // cap 1: the table changed
}

// groupReplica is one hosted replica and what it owns.
type groupReplica struct {
	*consensus.Replica
	// name is the group's (never renamed); started is when this replica
	// started, what its last contact with a leader counts from until it
	// has one.
	name    string
	started time.Time
	kv      *storage.KV
	logs    *raftLog
	trans   *raft.NetworkTransport
	ln      interface{ Close() error }
}

var _ api.Groups = (*groupHost)(nil)

func newGroupHost(n *Node, cfg Config, sizing storage.Sizing) *groupHost {
	h := &groupHost{n: n, cfg: cfg, sizing: sizing, logger: n.logger, changed: make(chan struct{}),
		hosted: map[ranges.GroupID]*groupReplica{}, wake: make(chan struct{}, 1)}
	h.table.Store(ranges.New())
	h.changedCtx, h.cancelChanged = context.WithCancel(context.Background())
	return h
}

// TableChanged implements api.Groups.
func (h *groupHost) TableChanged() context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changedCtx
}

// setTable is the meta group's OnTable: it runs on the apply path, so it
// only records the table and wakes the loop.
func (h *groupHost) setTable(t *ranges.Table) {
	h.mu.Lock()
	h.table.Store(t)
	close(h.changed)
	h.changed = make(chan struct{})
	h.cancelChanged()
	h.changedCtx, h.cancelChanged = context.WithCancel(context.Background())
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Table implements api.Groups.
func (h *groupHost) Table() *ranges.Table { return h.table.Load() }

// WaitTable implements api.Groups.
func (h *groupHost) WaitTable(ctx context.Context, v uint64) error {
	for {
		h.mu.Lock()
		ch := h.changed
		h.mu.Unlock()
		t := h.Table()
		if t.Version >= v {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for range table version %d (at %d): %w", v, t.Version, ctx.Err())
		}
	}
}

// Replica implements api.Groups.
func (h *groupHost) Replica(id ranges.GroupID) (api.GroupReplica, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.hosted[id]
	if !ok {
		return nil, false
	}
	return r.Replica, true
}

// Addr implements api.Groups.
func (h *groupHost) Addr(id string) string {
	if id == h.n.id {
		return h.n.advertise
	}
	addr, _ := h.n.addrs.gossipAddr(id)
	return addr
}

// run starts the replicas the table gives this node, whenever it
// changes, until ctx ends; a replica that fails to start is tried again.
func (h *groupHost) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	spread := time.NewTicker(spreadInterval)
	defer spread.Stop()
	for {
		if err := h.reconcile(); err != nil {
			h.logger.Warn("could not start a data group's replica; trying again", "error", err)
			retry.Reset(time.Second)
		}
		if h.moveGroups(ctx) || h.moving() {
			// The next step waits on the last one, or on an election.
			retry.Reset(moveRetry)
		}
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case <-retry.C:
		case <-spread.C:
			h.spreadLeaders()
			h.replaceGone(ctx)
		}
	}
}

// moveRetry paces the steps of a move.
const moveRetry = 100 * time.Millisecond

// moving reports whether a group this node hosts is moving.
func (h *groupHost) moving() bool {
	t := h.Table()
	h.mu.Lock()
	defer h.mu.Unlock()
	for id := range h.hosted {
		if g, ok := t.Group(id); ok && moveUnderWay(g) {
			return true
		}
		if _, creating := pendingCreate(t, id); creating {
			return true
		}
	}
	return false
}

// moveUnderWay reports whether g has a move target its replicas have not
// reached yet: a target stays set once reached, pinning the group.
func moveUnderWay(g ranges.Group) bool {
	return g.Target != nil && !(slices.Equal(g.Voters, g.Target) && len(g.NonVoters) == 0)
}

// hosts reports whether g places a replica on node id.
func hosts(g ranges.Group, id string) bool {
	return slices.Contains(g.Voters, ranges.NodeID(id)) || slices.Contains(g.NonVoters, ranges.NodeID(id))
}

// reconcile starts a replica of every group the table places here, and
// stops (and deletes) those of groups it no longer places here: the
// group's raft configuration dropped this node before the table did.
func (h *groupHost) reconcile() error {
	t := h.Table()
	var errs []error
	h.mu.Lock()
	var gone []ranges.GroupID
	for id := range h.hosted {
		if g, ok := t.Group(id); !ok || !hosts(g, h.n.id) {
			gone = append(gone, id)
		}
	}
	h.mu.Unlock()
	for _, id := range gone {
		h.mu.Lock()
		r := h.hosted[id]
		delete(h.hosted, id)
		h.mu.Unlock()
		if err := r.close(); err != nil {
			errs = append(errs, fmt.Errorf("group %d: stop: %w", id, err))
			continue
		}
		if err := os.RemoveAll(h.groupDir(id)); err != nil {
			errs = append(errs, fmt.Errorf("group %d: %w", id, err))
		}
		h.logger.Info("stopped and deleted this node's replica of a data group: the group moved off this node", "group", id)
	}
	for _, g := range t.Groups {
		if g.ID == ranges.MetaID || !hosts(g, h.n.id) {
			continue
		}
		h.mu.Lock()
		_, running := h.hosted[g.ID]
		closed := h.closed
		h.mu.Unlock()
		if running || closed {
			continue
		}
		r, err := h.start(t, g)
		if err != nil {
			errs = append(errs, fmt.Errorf("group %d (%s): %w", g.ID, g.Name, err))
			continue
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			r.close()
			return nil
		}
		h.hosted[g.ID] = r
		h.mu.Unlock()
		h.logger.Info("started a replica of a data group", "group", g.ID, "name", g.Name, "voters", g.Voters)
	}
	return errors.Join(errs...)
}

// start opens group g's stores and starts its replica, bootstrapping the
// group with the table's voters when it has no raft state yet.
func (h *groupHost) start(t *ranges.Table, g ranges.Group) (_ *groupReplica, err error) {
	n := h.n
	dir := h.groupDir(g.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	logger := n.logger.With("group", uint64(g.ID))
	r := &groupReplica{name: g.Name, started: time.Now()}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.logs, err = openRaftLog(dir, h.sizing.RaftSegment, nil, n.disk, logger); err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, consensus.NewHCLogger(logger, "snapshots", hclog.Info))
	if err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	kvDir := filepath.Join(dir, "kv")
	if r.kv, err = storage.OpenKV(kvDir, logger, storage.Options{Sizing: h.sizing, Guard: n.disk}); err != nil {
		return nil, err
	}
	advertise, err := net.ResolveTCPAddr("tcp", n.advertise)
	if err != nil {
		return nil, fmt.Errorf("advertised address: %w", err)
	}
	ln := n.groups.Listener(uint64(g.ID))
	r.ln = ln
	layer := consensus.NewStreamLayer(ln, advertise, n.groups.Dial(uint64(g.ID)))
	r.trans = newRaftTransport(layer, n.addrs, logger)
	hasState, err := raft.HasExistingState(r.logs.logs, r.logs.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("check raft state: %w", err)
	}
	owned := t
	tr, creating := pendingCreate(t, g.ID)
	if creating {
		// The group's ranges are its once the transfer switches.
		if owned, err = t.Switch(tr.ID); err != nil {
			return nil, err
		}
		if !hasState {
			// A copy cut short by a crash left no raft state: start over.
			if r.kv.AppliedIndex() != 0 {
				r.kv.Close()
				r.kv = nil
				if err := os.RemoveAll(kvDir); err != nil {
					return nil, err
				}
				if r.kv, err = storage.OpenKV(kvDir, logger, storage.Options{Sizing: h.sizing, Guard: n.disk}); err != nil {
					return nil, err
				}
			}
			if err := h.seed(r, snaps, tr, g, logger); err != nil {
				return nil, err
			}
		}
	}
	cfg := h.cfg
	r.Replica, err = consensus.NewReplica(consensus.Config{
		ID:               n.id,
		Group:            g.ID,
		GroupTable:       owned,
		Logs:             r.logs.logs,
		Stable:           r.logs.store,
		Snapshots:        snaps,
		TempDir:          dir,
		Transport:        r.trans,
		KV:               r.kv,
		Limits:           consensus.Limits{MaxRangePairs: cfg.Limits.MaxRangePairs, MaxRangeBytes: cfg.Limits.MaxRequestBytes},
		HeartbeatTimeout: cfg.HeartbeatTimeout,
		ElectionTimeout:  cfg.ElectionTimeout,
		LeaderReadIndex:  n.peers.GroupReadIndex(uint64(g.ID)),
		LogStalled:       r.logs.Stalled,
		Retention:        cfg.Retention,
		ClusterID:        n.ident.ID,
		Disk:             n.disk,
		Logger:           logger,
	})
	if err != nil {
		return nil, err
	}
	r.logs.whenFailed(r.Replica.LogFailed)
	// The nodes a group is created on bootstrap it; a node added by a move
	// starts empty and waits for the group's leader.
	if !r.HasState() && !creating && g.Target == nil && slices.Contains(g.Voters, ranges.NodeID(n.id)) {
		servers, err := h.servers(g)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		if err := r.Bootstrap(servers); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	return r, nil
}

// servers is g's voters as raft's configuration.
func (h *groupHost) servers(g ranges.Group) ([]raft.Server, error) {
	servers := make([]raft.Server, 0, len(g.Voters))
	for _, v := range g.Voters {
		addr, err := h.n.addrs.ServerAddr(raft.ServerID(v))
		if err != nil {
			return nil, err
		}
		servers = append(servers, raft.Server{ID: raft.ServerID(v), Address: addr, Suffrage: raft.Voter})
	}
	return servers, nil
}

// groupDir is where this node keeps its replica of group id.
func (h *groupHost) groupDir(id ranges.GroupID) string {
	return filepath.Join(h.n.dataDir, groupsDir, strconv.FormatUint(uint64(id), 10))
}

// close stops a replica and closes what it owns.
func (r *groupReplica) close() error {
	var errs []error
	if r.Replica != nil {
		if err := r.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	if r.trans != nil {
		// Close alone leaves the connections it dialed open.
		r.trans.CloseStreams()
		r.trans.Close()
	}
	if r.ln != nil {
		r.ln.Close()
	}
	if r.kv != nil {
		if err := r.kv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if r.logs != nil {
		if err := r.logs.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close stops every hosted replica; none starts after it.
func (h *groupHost) close() error {
	h.mu.Lock()
	h.closed = true
	hosted := h.hosted
	h.hosted = map[ranges.GroupID]*groupReplica{}
	h.mu.Unlock()
	var errs []error
	for id, r := range hosted {
		if err := r.close(); err != nil {
			errs = append(errs, fmt.Errorf("group %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// hostedGroup is one replica this node hosts, with the group's entry in
// the range table it was listed from.
type hostedGroup struct {
	ranges.Group
	r *groupReplica
}

// listHosted returns the replicas this node hosts, by group id, at most
// limit of them (the lowest ids); and how many it hosts and how many of
// those groups are moving. A replica may be shut down by the time the
// caller reads it: raft then says so (raft.Shutdown), nothing fails.
func (h *groupHost) listHosted(limit int) (list []hostedGroup, hosted, moving int) {
	t := h.Table()
	h.mu.Lock()
	for id, r := range h.hosted {
		g, ok := t.Group(id)
		if !ok {
			// Dropped from the table; reconcile stops it next.
			g = ranges.Group{ID: id}
		}
		g.Name = r.name
		list = append(list, hostedGroup{Group: g, r: r})
	}
	h.mu.Unlock()
	slices.SortFunc(list, func(a, b hostedGroup) int { return cmp.Compare(a.ID, b.ID) })
	for _, g := range list {
		if moveUnderWay(g.Group) {
			moving++
		}
	}
	return list[:min(len(list), limit)], len(list), moving
}

// groupInfo is group id's entry with what this node's replica knows.
func (h *groupHost) groupInfo(ctx context.Context, t *ranges.Table, id ranges.GroupID) *kvstorev1.GroupInfo {
	info := consensus.GroupInfo(t, id)
	var rep interface {
		Leader() (string, string)
		Range(context.Context, *kvstorev1.RangeRequest) (*kvstorev1.RangeResponse, error)
	}
	if id == ranges.MetaID {
		rep = h.n.replica
	} else if r, ok := h.Replica(id); ok {
		rep = r
	}
	if rep == nil || info == nil {
		return info
	}
	info.Leader, _ = rep.Leader()
	kvDir := filepath.Join(h.n.dataDir, "kv")
	if id != ranges.MetaID {
		kvDir = filepath.Join(h.groupDir(id), "kv")
	}
	info.SizeBytes = dirSize(kvDir)
	for _, s := range info.Ranges {
		end := s.End
		if len(end) == 0 {
			end = []byte{0}
		}
		resp, err := rep.Range(ctx, &kvstorev1.RangeRequest{Key: s.Start, RangeEnd: end, CountOnly: true, Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
		if err != nil {
			continue
		}
		info.Keys += resp.GetCount()
		info.Revision = resp.GetHeader().GetRevision()
	}
	return info
}
