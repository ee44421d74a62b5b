package consensus

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
)

// Backups and restores.
//
// A backup is a copy of the key-value state (storage.KV.Snapshot's
// format, the same copy a follower receives as a raft snapshot and a
// rebuilding member fetches), taken at a linearizable revision. A restore
// loads it into a new store and writes a raft snapshot that is a
// checkpoint marker at the copy's revision, with a configuration of one
// server. Raft then starts from that index, so the revisions of the new
// cluster go on from the copy's (a revision is a raft index), and members
// that join receive the copy as any follower receives a snapshot.

// BackupState writes a copy of the key-value state for a backup, at a
// revision at least as recent as every write acknowledged before the call
// (a read index): it calls start with the copy's revision and writes the
// copy to what start returns.
func (r *Replica) BackupState(ctx context.Context, start func(rev uint64) (io.Writer, error)) (storage.SnapshotStats, error) {
	if err := r.fsm.serving(); err != nil {
		return storage.SnapshotStats{}, err
	}
	idx, err := r.ri.get(ctx)
	if err == ErrNotLeader {
		return storage.SnapshotStats{}, r.notLeader()
	}
	if err != nil {
		return storage.SnapshotStats{}, err
	}
	return r.copyState(ctx, idx, start)
}

// WriteRestoreSnapshot writes, in the raft snapshot store under dataDir,
// the snapshot a restored node starts from: a checkpoint marker at index
// (the restored store's applied index, which its checkpoint covers), whose
// configuration is self alone, as a voter. The store must hold exactly
// that index; raft must have no other state.
func WriteRestoreSnapshot(dataDir string, index uint64, self raft.Server, logger *slog.Logger) error {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dataDir, 2, NewHCLogger(logger, "snapshots", hclog.Info))
	if err != nil {
		return fmt.Errorf("restore: raft snapshot store: %w", err)
	}
	_, trans := raft.NewInmemTransport(self.Address)
	defer trans.Close()
	self.Suffrage = raft.Voter
	conf := raft.Configuration{Servers: []raft.Server{self}}
	// Term 1: the first term of the new cluster's log; its first election
	// is at term 1 too, as after a bootstrap.
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, conf, index, trans)
	if err != nil {
		return fmt.Errorf("restore: create the raft snapshot: %w", err)
	}
	if _, err := sink.Write(encodeCheckpointMarker(index)); err != nil {
		sink.Cancel()
		return fmt.Errorf("restore: write the raft snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("restore: write the raft snapshot: %w", err)
	}
	return nil
}
