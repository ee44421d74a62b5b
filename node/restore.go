package node

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/snapfile"
)

// RestoreConfig says what Restore makes.
type RestoreConfig struct {
	// From is the snapshot file (kvctl snapshot save).
	From string
	// DataDir is the data directory to prepare: it must not exist, or be
	// empty.
	DataDir string
	// Name is the node id; empty: a random one, as a first start makes.
	Name string
	// Advertise is the address the new cluster's configuration gives the
	// node; empty: DefaultListen. A node that starts elsewhere corrects
	// it, as a member that moved does.
	Advertise string
	Logger    *slog.Logger
}

// Restored describes a data directory Restore prepared.
type Restored struct {
	Snapshot  *snapfile.Checked
	NodeID    string
	ClusterID string
	Took      time.Duration
}

// Restore prepares a data directory that starts a new one-node cluster,
// under a new cluster id, holding exactly the snapshot's data (less its
// alarms, which named members of the old cluster): the key-value state at
// the snapshot's revision, with its history and leases, and a raft
// snapshot at that revision naming the node alone. Started, the node
// leads the new cluster, and its revisions go on from the snapshot's;
// nodes started with empty data dirs join it and receive the state by
// raft. Members of the old cluster are refused by the cluster id check.
//
// The file is checked whole before anything is written: a damaged or
// truncated file fails with snapfile.ErrInvalid and DataDir is left as it
// was (not created). The directory is filled under another name beside it
// and renamed at the end, so a failure part way leaves nothing either.
func Restore(cfg RestoreConfig) (*Restored, error) {
	start := time.Now()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir == "" {
		return nil, &ConfigError{Field: "DataDir", Value: `""`, Reason: "a data directory is required"}
	}
	check := Config{DataDir: cfg.DataDir, Name: cfg.Name, Advertise: cfg.Advertise}
	if err := check.Validate(); err != nil {
		return nil, err
	}
	if cfg.Advertise == "" {
		cfg.Advertise = DefaultListen
	}
	// The directory before the file: reading a large file to then refuse
	// the directory wastes the operator's time.
	target := filepath.Clean(cfg.DataDir)
	ents, err := os.ReadDir(target)
	existed := err == nil
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("restore: %w", err)
	case len(ents) > 0:
		return nil, fmt.Errorf("restore: the data directory %s is not empty; restore into a new or empty directory", target)
	}
	snap, err := snapfile.Verify(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	cfg.Logger.Info("checked the snapshot file", "file", cfg.From, "revision", snap.Revision, "keys", snap.Keys,
		"bytes", snap.Size, "sha256", snap.SHA256, "took", time.Since(start).Round(time.Millisecond))
	if snap.Revision <= 0 {
		return nil, fmt.Errorf("restore: %s holds an empty store (revision %d): start a new cluster instead", cfg.From, snap.Revision)
	}

	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(target)+".restoring-")
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(stage)
		}
	}()
	id, err := loadID(stage, cfg.Name)
	if err != nil {
		return nil, err
	}
	clusterID := newClusterID()
	if err := writeClusterID(stage, clusterID); err != nil {
		return nil, err
	}
	loading := time.Now()
	if err := restoreState(stage, snap, cfg.Logger); err != nil {
		return nil, err
	}
	cfg.Logger.Info("loaded the key-value state", "dir", filepath.Join(target, "kv"), "took", time.Since(loading).Round(time.Millisecond))
	if err := consensus.WriteRestoreSnapshot(stage, uint64(snap.Revision),
		raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(cfg.Advertise)}, cfg.Logger); err != nil {
		return nil, err
	}
	if err := storage.SyncDir(stage); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := moveInto(stage, target, existed); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	done = true
	if err := storage.SyncDir(parent); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return &Restored{Snapshot: snap, NodeID: id, ClusterID: clusterID, Took: time.Since(start)}, nil
}

// restoreState loads the snapshot's state into dir/kv and closes it
// checkpointed at the snapshot's revision.
func restoreState(dir string, snap *snapfile.Checked, logger *slog.Logger) (err error) {
	kv, err := storage.OpenKV(filepath.Join(dir, "kv"), logger, storage.Options{})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() {
		if cerr := kv.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("restore: %w", cerr)
		}
	}()
	body, err := snap.Open()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer body.Close()
	start := time.Now()
	if err := kv.RestoreSorted(body); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	logger.Info("restore: loaded", "took", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := kv.DropAlarms(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	logger.Info("restore: dropped the old cluster's alarms", "took", time.Since(start).Round(time.Millisecond))
	if got := kv.AppliedIndex(); got != uint64(snap.Revision) {
		return fmt.Errorf("restore: the restored state is at revision %d, the snapshot says %d", got, snap.Revision)
	}
	if _, err := kv.Checkpoint(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// moveInto puts the prepared directory stage at target: a rename, over
// target when it is an empty directory. An empty directory that cannot be
// replaced (a mount point) gets stage's entries moved into it instead,
// the cluster id last: a node never starts on a directory without one and
// with raft state, and Restore's caller sees the error.
func moveInto(stage, target string, existed bool) error {
	if existed {
		if err := os.Remove(target); err != nil {
			ents, err := os.ReadDir(stage)
			if err != nil {
				return err
			}
			var last string
			for _, e := range ents {
				if e.Name() == clusterIDFile {
					last = e.Name()
					continue
				}
				if err := os.Rename(filepath.Join(stage, e.Name()), filepath.Join(target, e.Name())); err != nil {
					return err
				}
			}
			if last != "" {
				if err := os.Rename(filepath.Join(stage, last), filepath.Join(target, last)); err != nil {
					return err
				}
			}
			if err := storage.SyncDir(target); err != nil {
				return err
			}
			return os.Remove(stage)
		}
	}
	return os.Rename(stage, target)
}
