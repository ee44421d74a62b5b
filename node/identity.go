package node

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/storage"
)

// clusterIDFile holds the cluster id in the data dir.
const clusterIDFile = "cluster-id"

// strangerMsg is the one error a node logs when the nodes it contacts (its
// seeds, or its raft peers) belong to another cluster.
const strangerMsg = "this node belongs to another cluster than the nodes it contacts; not joining them"

// refusedMsg is what a node logs, rate limited, when it refuses a node of
// another cluster that contacted it.
const refusedMsg = "refused a node of another cluster"

// identity is which cluster this node belongs to, and the rule by which it
// talks to other nodes (admit). The cluster id is made when a cluster is
// created, kept in <data-dir>/cluster-id, and never changes:
//
//   - a node that bootstraps a cluster makes it and writes it before
//     bootstrapping, so that no raft state is ever without an id;
//   - a node with no id and no raft state takes the id of the first node of
//     a cluster that opens a raft connection to it (it is being added), and
//     writes it before it answers;
//   - a node with raft state and no id (a data dir from before cluster ids)
//     derives one once: alone in its raft configuration, at start; else its
//     leader proposes one through the log, and every member writes the first
//     it applies. Until then such nodes talk only with the servers of their
//     own raft configuration.
//
// Once a node has an id it refuses every node with another (admit).
type identity struct {
	dir    string
	nodeID string
	addr   string
	logger *slog.Logger

	// id is the cluster id, "" while there is none; written under mu.
	id atomic.Pointer[string]
	mu sync.Mutex
	// changed (capacity 1) is signalled when the id is set, for gossip.
	changed chan struct{}

	// raft is set once raft runs (a raftView); hadState is what the node
	// had before.
	raft     atomic.Value
	hadState bool

	// reported holds the other clusters this node has said it is not of
	// (strangerMsg), once each; refusals limits refusedMsg.
	repMu     sync.Mutex
	reported  map[string]bool
	refusals  map[string]time.Time
	refuseLog time.Duration
}

func newIdentity(dir, nodeID, addr string, logger *slog.Logger) (*identity, error) {
	i := &identity{
		dir:       dir,
		nodeID:    nodeID,
		addr:      addr,
		logger:    logger,
		changed:   make(chan struct{}, 1),
		reported:  map[string]bool{},
		refusals:  map[string]time.Time{},
		refuseLog: time.Minute,
	}
	id, err := readClusterID(dir)
	if err != nil {
		return nil, err
	}
	i.id.Store(&id)
	return i, nil
}

// readClusterID returns the cluster id stored in dir, "" when there is none.
func readClusterID(dir string) (string, error) {
	path := filepath.Join(dir, clusterIDFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("node: read cluster id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !consensus.ValidClusterID(id) {
		return "", fmt.Errorf("node: %s holds %q, not a cluster id (32 hex digits)", path, id)
	}
	return id, nil
}

// writeClusterID stores id in dir durably: the file, then its directory
// entry, are on disk when it returns.
func writeClusterID(dir, id string) error {
	if err := storage.WriteFileDurably(dir, clusterIDFile, []byte(id+"\n"), 0o600); err != nil {
		return fmt.Errorf("node: cluster id: %w", err)
	}
	return nil
}

// newClusterID returns a fresh cluster id: 16 random bytes in hex.
func newClusterID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("node: no randomness for a cluster id: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// ID is the cluster id, "" while there is none.
func (i *identity) ID() string { return *i.id.Load() }

// set gives the node the cluster id, durably, or refuses when it has
// another already. why is logged.
func (i *identity) set(id, why string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	switch cur := i.ID(); cur {
	case id:
		return nil
	case "":
	default:
		return fmt.Errorf("this node belongs to cluster %s, not %s", cur, id)
	}
	if err := writeClusterID(i.dir, id); err != nil {
		return err
	}
	i.id.Store(&id)
	i.logger.Info("cluster id set", "cluster_id", id, "how", why, "data_dir", i.dir)
	select {
	case i.changed <- struct{}{}:
	default:
	}
	return nil
}

// fromLog is Config.OnClusterID: the first set_cluster_id entry applied
// names the cluster; later ones change nothing.
func (i *identity) fromLog(id string) error {
	if cur := i.ID(); cur != "" {
		if cur != id {
			i.logger.Debug("the log names another cluster id; the first one stays", "cluster_id", cur, "in_log", id)
		}
		return nil
	}
	return i.set(id, "named through the raft log, for a cluster from before cluster ids")
}

// raftView is what identity needs to know of raft; neither call waits.
type raftView interface {
	// HasState tells whether this node has raft state.
	HasState() bool
	// Servers is the latest raft configuration.
	Servers() []raft.Server
}

// replicaView is the raftView of a running replica.
type replicaView struct{ r *consensus.Replica }

func (v replicaView) HasState() bool { return v.r.HasState() }

func (v replicaView) Servers() []raft.Server {
	f := v.r.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	return f.Configuration().Servers
}

// setRaft tells identity that raft runs.
func (i *identity) setRaft(v raftView) { i.raft.Store(&v) }

func (i *identity) view() raftView {
	if v, ok := i.raft.Load().(*raftView); ok {
		return *v
	}
	return nil
}

// hasState tells whether this node has raft state.
func (i *identity) hasState() bool {
	if v := i.view(); v != nil {
		return v.HasState()
	}
	return i.hadState
}

// configuration is the latest raft configuration, without waiting.
func (i *identity) configuration() []raft.Server {
	if v := i.view(); v != nil {
		return v.Servers()
	}
	return nil
}

// inConfiguration tells whether p is a server of this node's raft
// configuration, by id and address.
func (i *identity) inConfiguration(p peer) bool {
	for _, s := range i.configuration() {
		if string(s.ID) == p.nodeID && string(s.Address) == p.addr {
			return true
		}
	}
	return false
}

// onlyServer tells whether this node is the only server of its raft
// configuration.
func (i *identity) onlyServer() bool {
	servers := i.configuration()
	return len(servers) == 1 && string(servers[0].ID) == i.nodeID
}

// peer is another node as it described itself (handshake or gossip).
type peer struct {
	clusterID string
	nodeID    string
	addr      string
	hasState  bool
}

func (p peer) String() string {
	c := p.clusterID
	if c == "" {
		c = "none"
	}
	return fmt.Sprintf("%s at %s (cluster %s)", p.nodeID, p.addr, c)
}

// otherClusterError refuses a node of another cluster. Its OtherCluster
// method lets the packages that see it (raft's logger, gossip's join loop)
// know that it was reported already.
type otherClusterError struct{ msg string }

func (e *otherClusterError) Error() string      { return e.msg }
func (e *otherClusterError) OtherCluster() bool { return true }

// admit decides whether this node talks to p. Two nodes talk when they
// belong to one cluster; a node with no raft state has nothing to protect
// and talks to anyone; nodes without an id (data dirs from before cluster
// ids) talk only with the servers of their raft configuration. With adopt
// (p opens a raft connection to us, or answers one) this node takes p's id
// when it has none and may: it is being added to p's cluster.
func (i *identity) admit(p peer, adopt bool) error {
	if p.clusterID != "" && !consensus.ValidClusterID(p.clusterID) {
		// Never adopted: a node that took it could not read it back when
		// it restarts. Shown cut short: it is the peer's to choose.
		id := p.clusterID
		if len(id) > 40 {
			id = id[:40] + "..."
		}
		return &otherClusterError{fmt.Sprintf("node %s sent %q as its cluster id, which is not one (32 hex digits)", p.nodeID, id)}
	}
	local, state := i.ID(), i.hasState()
	switch {
	case local != "" && p.clusterID != "":
		if local == p.clusterID {
			return nil
		}
		return &otherClusterError{fmt.Sprintf("node %s belongs to cluster %s, node %s to cluster %s", p.nodeID, p.clusterID, i.nodeID, local)}
	case local != "":
		if !p.hasState || i.inConfiguration(p) {
			return nil
		}
		return &otherClusterError{fmt.Sprintf("node %s at %s has the raft state of a cluster from before cluster ids, and is not a server of cluster %s (node %s's)", p.nodeID, p.addr, local, i.nodeID)}
	case p.clusterID != "":
		if state && !i.inConfiguration(p) {
			return &otherClusterError{fmt.Sprintf("node %s belongs to cluster %s, and node %s has the raft state of a cluster from before cluster ids whose configuration does not name it", p.nodeID, p.clusterID, i.nodeID)}
		}
		if !adopt {
			return nil
		}
		if err := i.set(p.clusterID, "taken from "+p.nodeID+" at "+p.addr); err != nil {
			// Another cluster's node got here first.
			return &otherClusterError{err.Error()}
		}
		return nil
	default:
		if !state || !p.hasState || i.inConfiguration(p) {
			return nil
		}
		return &otherClusterError{fmt.Sprintf("nodes %s at %s and %s both have the raft state of clusters from before cluster ids, and %s's configuration does not name %s", p.nodeID, p.addr, i.nodeID, i.nodeID, p.nodeID)}
	}
}

// admitMeta is membership.Config.Admit: admit for gossip, which never
// adopts an id. A refusal is reported as one of a node that contacted us.
func (i *identity) admitMeta(m membership.Meta) error {
	p := peer{clusterID: m.ClusterID, nodeID: m.ID, addr: m.Addr, hasState: m.HasRaftState}
	err := i.admit(p, false)
	if err != nil {
		i.refused("gossip", p, err)
	}
	return err
}

// refused logs, rate limited per node, that this node refused p.
func (i *identity) refused(path string, p peer, err error) {
	key := p.nodeID + "|" + p.addr + "|" + p.clusterID
	now := time.Now()
	i.repMu.Lock()
	last, seen := i.refusals[key]
	allow := !seen || now.Sub(last) >= i.refuseLog
	if allow {
		if len(i.refusals) > 1024 {
			clear(i.refusals)
		}
		i.refusals[key] = now
	}
	i.repMu.Unlock()
	if !allow {
		i.logger.Debug("refused a node of another cluster again", "path", path, "peer", p.String(), "reason", err.Error())
		return
	}
	i.logger.Warn(refusedMsg, "path", path, "peer", p.nodeID, "peer_addr", p.addr, "peer_cluster_id", orNone(p.clusterID),
		"cluster_id", orNone(i.ID()), "reason", err.Error(),
		"hint", "it was given this node's address as a seed or peer; it keeps its own data. Repeats are logged at most once a minute")
}

// refusedBy logs, once per other cluster, that a node this node contacted
// (a seed, a raft peer, a leader) belongs to another cluster: this node
// is not joining it, and what to do about it.
func (i *identity) refusedBy(path string, p peer, err error) {
	i.repMu.Lock()
	first := !i.reported[p.clusterID]
	i.reported[p.clusterID] = true
	i.repMu.Unlock()
	if !first {
		i.logger.Debug("refused again by a node of another cluster", "path", path, "peer", p.String(), "reason", err.Error())
		return
	}
	local := i.ID()
	i.logger.Error(strangerMsg,
		"cluster_id", orNone(local), "data_dir", i.dir,
		"peer", p.nodeID, "peer_addr", p.addr, "peer_cluster_id", orNone(p.clusterID), "reason", err.Error(),
		"hint", fmt.Sprintf("to join the peer's cluster, stop this node and start it with an empty --data-dir (or remove %s; its data stays with cluster %s); to keep it in its own cluster, take the peer's address out of --join", i.dir, orNone(local)))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
