package node

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/kvstore/kvstore/membership"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// The gossip keyring. A node starts with --gossip-key as its only key; the
// keyring actions (ClusterService.GossipKeys) change it while it runs, and
// each change is written to <data-dir>/gossip-keyring before it is
// answered, so that a restarted node gossips with the keys the cluster
// uses now: that file wins over Config.GossipKey.

const keyringFile = "gossip-keyring"

// keyringOnDisk is the file's form: the primary key and every key, base64
// (encoding/json's []byte).
type keyringOnDisk struct {
	Primary []byte   `json:"primary"`
	Keys    [][]byte `json:"keys"`
}

// loadKeyring reads the data dir's keyring; ok is false when it has none.
func loadKeyring(dataDir string) (primary []byte, extra [][]byte, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, keyringFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("node: gossip keyring: %w", err)
	}
	var k keyringOnDisk
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, nil, false, fmt.Errorf("node: gossip keyring %s: %w", filepath.Join(dataDir, keyringFile), err)
	}
	if err := membership.ValidateKey(k.Primary); err != nil {
		return nil, nil, false, fmt.Errorf("node: gossip keyring %s: primary key: %w", filepath.Join(dataDir, keyringFile), err)
	}
	for _, key := range k.Keys {
		if !bytes.Equal(key, k.Primary) {
			extra = append(extra, key)
		}
	}
	return k.Primary, extra, true, nil
}

// saveKeyring writes the keyring crash-safely: a new file, synced, renamed
// over the old one.
func saveKeyring(dataDir string, primary []byte, all [][]byte) error {
	b, err := json.Marshal(keyringOnDisk{Primary: primary, Keys: all})
	if err != nil {
		return err
	}
	if err := storage.WriteFileDurably(dataDir, keyringFile, b, 0o600); err != nil {
		return fmt.Errorf("save gossip keyring: %w", err)
	}
	return nil
}

// gossipKeysLocal carries out a keyring action on this node and describes
// its keyring after it.
func (n *Node) gossipKeysLocal(action kvstorev1.GossipKeyAction, key []byte) *kvstorev1.GossipKeyring {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	g := n.gossip
	var err error
	switch action {
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST:
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL:
		err = g.InstallKey(key)
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_USE:
		err = g.UseKey(key)
	case kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_REMOVE:
		err = g.RemoveKey(key)
	default:
		err = fmt.Errorf("unknown gossip key action %v", action)
	}
	primary, all := g.Keys()
	if err == nil && action != kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST {
		err = saveKeyring(n.dataDir, primary, all)
		n.logger.Info("gossip keyring changed", "action", action.String(), "key", membership.KeyFingerprint(key), "primary", membership.KeyFingerprint(primary), "keys", len(all))
	}
	if err != nil {
		return &kvstorev1.GossipKeyring{NodeId: n.id, Error: err.Error()}
	}
	out := &kvstorev1.GossipKeyring{NodeId: n.id, Primary: membership.KeyFingerprint(primary)}
	for _, k := range all {
		out.Keys = append(out.Keys, membership.KeyFingerprint(k))
	}
	return out
}

// GossipKeys implements api.Admin: the action here, then (unless local) on
// every other live member, at once. A member gossip holds as suspect or
// dead is listed with an error, unchanged.
func (a admin) GossipKeys(ctx context.Context, action kvstorev1.GossipKeyAction, key []byte, local bool) ([]*kvstorev1.GossipKeyring, error) {
	out := []*kvstorev1.GossipKeyring{a.n.gossipKeysLocal(action, key)}
	if local {
		return out, nil
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range a.n.gossip.Members() {
		if m.ID == a.n.id || m.State == membership.StateLeft {
			continue
		}
		if m.State != membership.StateAlive {
			// Said, not skipped: the operator must know this keyring was not
			// changed before removing a key the member may still use.
			mu.Lock()
			out = append(out, &kvstorev1.GossipKeyring{NodeId: m.ID, Error: fmt.Sprintf("not reached: the member is %s in gossip", m.State)})
			mu.Unlock()
			continue
		}
		wg.Go(func() {
			ring, err := a.n.peers.GossipKeys(ctx, m.Addr, action, key)
			if err != nil {
				ring = &kvstorev1.GossipKeyring{NodeId: m.ID, Error: err.Error()}
			}
			mu.Lock()
			out = append(out, ring)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(x, y *kvstorev1.GossipKeyring) int { return cmp.Compare(x.GetNodeId(), y.GetNodeId()) })
	return out, nil
}
