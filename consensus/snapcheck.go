package consensus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
)

// DamagedSnapshot is a raft snapshot whose files do not read back whole.
type DamagedSnapshot struct {
	// Dir is the snapshot's directory.
	Dir string
	// Meta is what its metadata says; nil when the metadata itself is
	// damaged (then the term and index come from the directory's name).
	Meta *raft.SnapshotMeta
	// Newest is true when no other snapshot is newer: raft starts from
	// the newest, and sends it to followers; it never reads the others.
	Newest bool
	Err    error
}

// Error describes the damage, naming the file.
func (d DamagedSnapshot) Error() string { return d.Err.Error() }

// Unwrap returns the damage: a storage.CorruptError naming the file.
func (d DamagedSnapshot) Unwrap() error { return d.Err }

// raftSnapshotMeta is what raft.FileSnapshotStore writes to meta.json.
type raftSnapshotMeta struct {
	raft.SnapshotMeta
	CRC []byte
}

// CheckSnapshots reads the raft snapshots in dir, laid out as
// raft.FileSnapshotStore keeps them (a directory each, with meta.json and
// state.bin), and returns those that are damaged. raft's store skips a
// snapshot whose metadata does not read without saying so beyond a log
// line, and checks the checksum of the state only when it sends it. A
// checkpoint marker is read whole (it is a few bytes); a copy of a
// leader's state, which can be large, is checked against its size here
// and against its checksum when it is used.
func CheckSnapshots(dir string) ([]DamagedSnapshot, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("check snapshots: %w", err)
	}
	type seen struct {
		term, index uint64
		name        string
		damage      *DamagedSnapshot
	}
	var all []seen
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		s := seen{name: e.Name()}
		fmt.Sscanf(e.Name(), "%d-%d-", &s.term, &s.index)
		meta, err := checkSnapshot(filepath.Join(dir, e.Name()))
		if meta != nil {
			s.term, s.index = meta.Term, meta.Index
		}
		if err != nil {
			s.damage = &DamagedSnapshot{Dir: filepath.Join(dir, e.Name()), Meta: meta, Err: err}
		}
		all = append(all, s)
	}
	// raft's order: term, then index, then id.
	newer := func(a, b seen) bool {
		if a.term != b.term {
			return a.term > b.term
		}
		if a.index != b.index {
			return a.index > b.index
		}
		return a.name > b.name
	}
	var out []DamagedSnapshot
	for _, d := range all {
		if d.damage == nil {
			continue
		}
		d.damage.Newest = true
		for _, o := range all {
			if newer(o, d) {
				d.damage.Newest = false
			}
		}
		out = append(out, *d.damage)
	}
	return out, nil
}

// checkSnapshot reads one snapshot's metadata, and its state when that is
// a checkpoint marker.
func checkSnapshot(dir string) (*raft.SnapshotMeta, error) {
	metaPath := filepath.Join(dir, "meta.json")
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, &storage.CorruptError{Path: metaPath, Err: err}
	}
	var m raftSnapshotMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, &storage.CorruptError{Path: metaPath, Err: fmt.Errorf("%w: %w", storage.ErrCorrupt, err)}
	}
	if m.ID != filepath.Base(dir) || m.Version < raft.SnapshotVersionMin || m.Version > raft.SnapshotVersionMax {
		return nil, &storage.CorruptError{Path: metaPath, Err: fmt.Errorf("%w: id %q, version %d", storage.ErrCorrupt, m.ID, m.Version)}
	}
	statePath := filepath.Join(dir, "state.bin")
	fi, err := os.Stat(statePath)
	if err != nil {
		return &m.SnapshotMeta, &storage.CorruptError{Path: statePath, Err: err}
	}
	if fi.Size() != m.Size {
		return &m.SnapshotMeta, &storage.CorruptError{Path: statePath, Err: fmt.Errorf("%w: %d bytes, its metadata says %d", storage.ErrCorrupt, fi.Size(), m.Size)}
	}
	if m.Size != int64(checkpointMarkerLen) {
		return &m.SnapshotMeta, nil
	}
	state, err := os.ReadFile(statePath)
	if err != nil {
		return &m.SnapshotMeta, &storage.CorruptError{Path: statePath, Err: err}
	}
	h := crc64.New(crc64.MakeTable(crc64.ECMA))
	h.Write(state)
	if !bytes.Equal(h.Sum(nil), m.CRC) {
		return &m.SnapshotMeta, &storage.CorruptError{Path: statePath, Err: fmt.Errorf("%w: its checksum does not match", storage.ErrCorrupt)}
	}
	if !isCheckpointMarker(state) || markerIndex(state) != m.Index {
		return &m.SnapshotMeta, &storage.CorruptError{Path: statePath, Err: fmt.Errorf("%w: not the checkpoint marker of index %d", storage.ErrCorrupt, m.Index)}
	}
	return &m.SnapshotMeta, nil
}

// SetAsideSnapshot moves a damaged snapshot's directory out of raft's
// snapshot directory, to <snapshots>.corrupt-<time>/, and returns where.
func SetAsideSnapshot(dir string) (string, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	aside := filepath.Join(parent+".corrupt-"+time.Now().UTC().Format("20060102T150405Z"), filepath.Base(dir))
	if err := os.MkdirAll(filepath.Dir(aside), 0o700); err != nil {
		return "", fmt.Errorf("set aside %s: %w", dir, err)
	}
	if err := os.Rename(dir, aside); err != nil {
		return "", fmt.Errorf("set aside %s: %w", dir, err)
	}
	return aside, nil
}

// repairSnapshot replaces the damaged newest snapshot the node started
// with (Config.RepairSnapshot), once the store is rebuilt past it: a new
// checkpoint marker with the same metadata, then the damaged one set
// aside. Raft starts from the newest snapshot's metadata and sends its
// state to followers that need it, so one must read back whole.
func (r *Replica) repairSnapshot() error {
	d := r.repair
	if d == nil {
		return nil
	}
	m := d.Meta
	if r.kv.AppliedIndex() < m.Index {
		return fmt.Errorf("repair snapshot %s: the state is at %d, behind it", d.Dir, m.Index)
	}
	sink, err := r.snaps.SnapshotStore.Create(m.Version, m.Index, m.Term, m.Configuration, m.ConfigurationIndex, r.trans)
	if err != nil {
		return fmt.Errorf("repair snapshot %s: %w", d.Dir, err)
	}
	if err := checkpointSnapshot(m.Index).Persist(sink); err != nil {
		return fmt.Errorf("repair snapshot %s: %w", d.Dir, err)
	}
	aside, err := SetAsideSnapshot(d.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		aside, err = "(removed by the snapshot store)", nil
	}
	if err != nil {
		return err
	}
	r.logger.Info("replaced a damaged raft snapshot", "snapshot", d.Dir, "moved_to", aside, "index", m.Index)
	r.repair = nil
	return nil
}

// Membership reads the raft configuration the stores hold without
// starting raft: the servers, and whether there is any raft state at all.
func Membership(id string, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore) (servers []raft.Server, hasState bool, err error) {
	hasState, err = raft.HasExistingState(logs, stable, snaps)
	if err != nil || !hasState {
		return nil, false, err
	}
	defer func() {
		// raft panics when its log misses an entry it expects.
		if p := recover(); p != nil {
			err = fmt.Errorf("read the raft configuration: %v", p)
		}
	}()
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id)
	conf.NoSnapshotRestoreOnStart = true
	conf.Logger = hclog.NewNullLogger()
	_, trans := raft.NewInmemTransport("")
	c, err := raft.GetConfiguration(conf, nopFSM{}, logs, stable, snaps, trans)
	if err != nil {
		return nil, true, fmt.Errorf("read the raft configuration: %w", err)
	}
	return c.Servers, true, nil
}

// nopFSM stands for the state machine where raft needs one but never
// calls it (Membership).
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("no state machine") }
func (nopFSM) Restore(io.ReadCloser) error         { return errors.New("no state machine") }
