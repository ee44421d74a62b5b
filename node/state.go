package node

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/storage"
)

// stateOpener opens a node's key-value state and decides what to do when
// it is corrupt (a damaged file in kv/, a damaged newest raft snapshot):
// in a cluster the state is set aside for an empty one, which the replica
// rebuilds from another member (consensus/rebuild.go); a node alone, with
// nobody to rebuild from, refuses to start and says what to do.
type stateOpener struct {
	dataDir string
	id      string
	logs    *raftLog
	snaps   raft.SnapshotStore
	opts    storage.Options
	logger  *slog.Logger

	kv *storage.KV
	// rebuild is why kv is an empty store standing for a corrupt one;
	// repair the damaged newest snapshot to replace once it is rebuilt.
	rebuild error
	repair  *consensus.DamagedSnapshot
}

func (o *stateOpener) kvDir() string { return filepath.Join(o.dataDir, "kv") }

// open opens the state, given the damaged snapshots CheckSnapshots found.
func (o *stateOpener) open(damaged []consensus.DamagedSnapshot) error {
	for _, d := range damaged {
		switch {
		case !d.Newest:
			// Raft only starts from, and sends, the newest.
			aside, err := consensus.SetAsideSnapshot(d.Dir)
			if err != nil {
				return fmt.Errorf("node: %w", err)
			}
			o.logger.Warn("set a damaged raft snapshot aside; a newer one is healthy", "snapshot", d.Dir, "error", d.Err, "moved_to", aside)
		case d.Meta == nil:
			return fmt.Errorf("node: the newest raft snapshot is corrupt: %w; it holds raft's own term and membership, "+
				"which cannot be rebuilt from the key-value state: remove the data directory %s and start the node again "+
				"to let it join its cluster afresh (a node alone: restore the directory from a backup)", d, o.dataDir)
		default:
			o.rebuild, o.repair = d, &d
		}
	}
	kv, err := storage.OpenKV(o.kvDir(), o.logger, o.opts)
	switch {
	case errors.Is(err, storage.ErrCorrupt):
		o.rebuild = err
	case err != nil:
		return fmt.Errorf("node: %w", err)
	default:
		o.kv = kv
	}
	if o.rebuild == nil {
		return nil
	}
	return o.setAside()
}

// setAside replaces a corrupt state with an empty one to rebuild, or
// refuses when there is nobody to rebuild it from.
func (o *stateOpener) setAside() error {
	servers, hasState, err := consensus.Membership(o.id, o.logs.logs, o.logs.store, o.snaps)
	if err != nil {
		return fmt.Errorf("node: the key-value state is corrupt (%w), and the raft configuration does not read: %w", o.rebuild, err)
	}
	others := 0
	for _, s := range servers {
		if string(s.ID) != o.id {
			others++
		}
	}
	if hasState && others == 0 {
		if o.kv != nil {
			o.kv.Close()
			o.kv = nil
		}
		return fmt.Errorf("node: the key-value state is corrupt: %w; this node has no other member to rebuild it from: "+
			"restore the data directory %s from a backup, or remove it to start the node empty", o.rebuild, o.dataDir)
	}
	if o.kv != nil {
		if err := o.kv.Close(); err != nil {
			o.logger.Warn("close the corrupt key-value state", "error", err)
		}
		o.kv = nil
	}
	aside, err := storage.SetAside(o.kvDir())
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	o.logger.Error("the key-value state is corrupt; set it aside", "file", storage.CorruptPath(o.rebuild), "error", o.rebuild, "moved_to", aside)
	if o.kv, err = storage.OpenKV(o.kvDir(), o.logger, o.opts); err != nil {
		return fmt.Errorf("node: open an empty key-value state: %w", err)
	}
	if !hasState {
		// Never in a cluster: nothing to rebuild, the state starts empty
		// as on a first start.
		o.rebuild, o.repair = nil, nil
	}
	return nil
}

// startReplica starts raft over the state; a state found corrupt only then
// (a lease that does not read, a checkpoint the state fell behind) is set
// aside and the replica started again to rebuild it.
func (o *stateOpener) startReplica(cfg consensus.Config) (*consensus.Replica, error) {
	cfg.KV, cfg.Rebuild, cfg.RepairSnapshot = o.kv, o.rebuild, o.repair
	r, err := consensus.NewReplica(cfg)
	if err == nil || o.rebuild != nil || !errors.Is(err, storage.ErrCorrupt) {
		if err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		return r, nil
	}
	o.rebuild = err
	if err := o.setAside(); err != nil {
		return nil, err
	}
	cfg.KV, cfg.Rebuild, cfg.RepairSnapshot = o.kv, o.rebuild, o.repair
	if r, err = consensus.NewReplica(cfg); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	return r, nil
}
